"""A real DNS server for tests, on dnspython: answers A and SRV questions over UDP on a
loopback port from `records`, which the test rewrites while it runs.

    server = DnsServer().start()
    server.records["orders.test."] = {"A": ["127.0.0.2", "127.0.0.3"]}
    server.records["_http._tcp.orders.test."] = {"SRV": [(10, 1, 8080, "a.orders.test.")]}
    server.fail = True   # SERVFAIL from now on

Every answer has `ttl` (1 s by default); questions are counted in `.questions`.
"""
from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, ttl: int = 1):
        self.records: dict[str, dict] = {}
        self.ttl = ttl
        self.fail = False
        self.questions = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.running = True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "DnsServer":
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - garbage: no answer
                continue
            self.questions += 1
            self.sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query):
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.fail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        question = query.question[0]
        name = question.name.to_text().lower()
        entry = self.records.get(name)
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        kind = dns.rdatatype.to_text(question.rdtype)
        if kind == "A" and entry.get("A"):
            response.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "A", *entry["A"]))
        elif kind == "SRV" and entry.get("SRV"):
            response.answer.append(dns.rrset.from_text(
                name, self.ttl, "IN", "SRV", *[f"{p} {w} {port} {target}" for p, w, port, target in entry["SRV"]]))
        return response

    def stop(self) -> None:
        self.running = False
        self.sock.close()
