"""The WAF's verdicts against nginx + ModSecurity's (Debian's libnginx-mod-http-modsecurity)
with the same base configuration and CRS, request by request: blocked on both or passed on
both. The corpus is test_waf's attacks in every place they apply, its benign requests, and a
few more of each kind."""
import shutil
import socket
import subprocess
import urllib.parse

import pytest

from tests.integration.test_waf import ATTACKS, BENIGN, BROWSER
from tests.support import modsecurity
from tests.support.processes import Gateway, free_port, wait_for
from tests.support.upstream import Upstream

pytestmark = pytest.mark.skipif(
    not (shutil.which("nginx") and modsecurity.available()),
    reason="needs nginx with libnginx-mod-http-modsecurity and modsecurity-crs (make test installs them)")


def _nginx(workdir, upstream_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = modsecurity.nginx_conf(str(workdir), port, upstream_port)
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, timeout=20)
    return proc, port


def _status(port: int, raw: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def _corpus() -> list[tuple[str, bytes]]:
    """(name, raw request) pairs; each closes its connection after the answer."""
    out = []

    def raw(method, target, headers="", body=b""):
        if body:
            headers += f"Content-Length: {len(body)}\r\n"
        return f"{method} {target} HTTP/1.1\r\n{BROWSER}Connection: close\r\n{headers}\r\n".encode() + body

    for family, (value, places) in ATTACKS.items():
        quoted = urllib.parse.quote(value, safe="")
        for place in places:
            name = place.__name__
            if name == "query":
                out.append((f"{family}/query", raw("GET", f"/search?q={quoted}")))
            elif name == "form":
                out.append((f"{family}/form", raw("POST", "/submit", "Content-Type: application/x-www-form-urlencoded\r\n",
                                                  f"q={quoted}".encode())))
            elif name == "json_body":
                import json

                out.append((f"{family}/json", raw("POST", "/api", "Content-Type: application/json\r\n",
                                                  json.dumps({"q": value}).encode())))
            elif name == "cookie":
                out.append((f"{family}/cookie", raw("GET", "/page", f"Cookie: session={quoted}\r\n")))
    for i, (method, target, headers, body) in enumerate(BENIGN):
        out.append((f"benign/{i}", raw(method, target, headers, body)))
    extra = [
        ("scanner-user-agent", "GET", "/", "", b""),
        ("benign-long-query", "GET", "/search?" + "&".join(f"f{i}=value{i}" for i in range(30)), "", b""),
        ("benign-utf8", "GET", "/search?q=" + urllib.parse.quote("café crème brûlée"), "", b""),
        ("benign-json-nested", "POST", "/api", "Content-Type: application/json\r\n",
         b'{"a": {"b": [1, 2, {"c": "d e f"}]}, "price": 10.5}'),
        ("xss-path", "GET", "/" + urllib.parse.quote("<svg/onload=alert(1)>"), "", b""),
        ("sqli-sleep", "GET", "/search?id=" + urllib.parse.quote("1 AND SLEEP(5)"), "", b""),
    ]
    for name, method, target, headers, body in extra:
        request = raw(method, target, headers, body)
        if name == "scanner-user-agent":
            request = request.replace(b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)", b"User-Agent: sqlmap/1.7")
        out.append((name, request))
    return out


def test_the_same_verdict_as_nginx_modsecurity_on_every_request(tmp_path):
    upstream = Upstream().start()
    nginx, nginx_port = _nginx(tmp_path, upstream.port)
    g = Gateway(f"""
waf: {{paranoia: 1}}
upstreams:
  app: {{targets: ["{upstream.url}"]}}
routes:
  - {{name: app, match: {{prefix: /}}, upstream: app}}
""").start()
    try:
        differ = []
        corpus = _corpus()
        for name, raw in corpus:
            theirs, ours = _status(nginx_port, raw), _status(g.port, raw)
            if (theirs == 403) != (ours == 403):
                differ.append((name, theirs, ours))
        assert not differ, differ
        blocked = sum(1 for _, raw in corpus if _status(g.port, raw) == 403)
        assert 0 < blocked < len(corpus)   # both kinds of verdict are in the corpus
    finally:
        g.cleanup()
        nginx.terminate()
        nginx.wait()
        upstream.stop()
