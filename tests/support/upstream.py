"""A real HTTP/1.1 upstream for tests, on an ephemeral port, in its own thread.

Behaviour is chosen by path:
  /status/N          answer status N
  /slow?ms=N         wait N ms, then answer
  /big?bytes=N       stream N bytes (Content-Length), honouring backpressure; ctype= adds a Content-Type
  /chunked?n=K       K chunks of 'chunk-i;' with Transfer-Encoding: chunked
  /delimited         body ended by closing the connection (no framing)
  /truncate          Content-Length 100, sends 10 bytes, closes
  /garbage           an invalid status line
  /conflict          both Content-Length and Transfer-Encoding
  /hang              never answers
  /close             answers with Connection: close
  /upload            reads the body streaming; answers its length and sha256
  /resource?...      a cacheable resource: cc= (Cache-Control), etag=, lm= (Last-Modified),
                     expires=, vary=, tag= (Surrogate-Key), date= (Date), cookie=1, status=N, ms=N (delay),
                     bytes=N (body size), chunked=1; the JSON body carries a serial number
  /json?...          JSON {"path", "query"} of the request; ms=N (delay), status=N
  anything else      JSON echo of what arrived (method, path, query, headers, body length)
Every request is recorded in `requests` (method, target, headers dict, body length).
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
from urllib.parse import parse_qs

import httptools
import orjson


class _Conn(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.queue: list = []
        self.busy = False
        self.head_only = False   # answering a HEAD: heads only

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1
        self.server.open_transports.add(transport)

    def connection_lost(self, exc):
        self.server.open_transports.discard(self.transport)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self):
        self.url = b""
        self.headers = []
        self.body_len = 0
        self.sha = hashlib.sha256()

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name.decode().lower(), value.decode()))

    def on_body(self, body):
        self.body_len += len(body)
        self.sha.update(body)

    def on_message_complete(self):
        req = {"method": self.parser.get_method().decode(), "target": self.url.decode(),
               "headers": dict(self.headers), "header_list": self.headers, "body_len": self.body_len,
               "sha256": self.sha.hexdigest(), "keep_alive": self.parser.should_keep_alive()}
        self.server.requests.append(req)
        self.queue.append(req)
        if not self.busy:
            asyncio.get_running_loop().create_task(self.run())

    async def run(self):
        self.busy = True
        while self.queue:
            req = self.queue.pop(0)
            try:
                await self.respond(req)
            except ConnectionError:
                return
            if self.transport.is_closing():
                return
        self.busy = False

    def write(self, status, body=b"", headers=(), keep_alive=True):
        head = [f"HTTP/1.1 {status} X\r\n"]
        for n, v in headers:
            head.append(f"{n}: {v}\r\n")
        if not any(n.lower() == "content-length" for n, _ in headers) and status not in (204, 304):
            head.append(f"content-length: {len(body)}\r\n")
        if not keep_alive:
            head.append("connection: close\r\n")
        # A response to HEAD is its head alone (RFC 9110 §9.3.2), whatever length it announces.
        self.transport.write("".join(head).encode() + b"\r\n" + (b"" if self.head_only else body))
        if not keep_alive:
            self.transport.close()

    async def respond(self, req):
        url = httptools.parse_url(req["target"].encode())
        path = url.path.decode()
        q = {k: v[0] for k, v in parse_qs(url.query.decode() if url.query else "").items()}
        t = self.transport
        self.head_only = req["method"] == "HEAD"
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        if self.server.fail_with:
            self.write(self.server.fail_with, b"sick", keep_alive=req["keep_alive"])
        elif path.startswith("/status/"):
            self.write(int(path.split("/")[2]), b"status body", keep_alive=req["keep_alive"])
        elif path == "/slow":
            await asyncio.sleep(int(q.get("ms", "100")) / 1000)
            self.write(200, b"slow", keep_alive=req["keep_alive"])
        elif path == "/big":
            n = int(q["bytes"])
            ctype = b"content-type: %s\r\n" % q["ctype"].encode() if "ctype" in q else b""
            t.write(b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n" % (ctype, n))
            if self.head_only:
                n = 0   # the length announced, no body sent
            block = b"x" * 65536
            while n > 0:
                piece = block[:min(n, len(block))]
                t.write(piece)
                n -= len(piece)
                while t.get_write_buffer_size() > 1 << 20:
                    await asyncio.sleep(0.001)
        elif path == "/chunked":
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(int(q.get("n", "3"))):
                c = f"chunk-{i};".encode()
                t.write(b"%x\r\n%s\r\n" % (len(c), c))
                await asyncio.sleep(0.001)
            t.write(b"0\r\n\r\n")
        elif path == "/delimited":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of this until close")
            t.close()
        elif path == "/truncate":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            await asyncio.sleep(0.01)
            t.close()
        elif path == "/conflict":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        elif path == "/te-foo":
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: foo\r\n\r\nbody in an unknown coding")
            t.close()
        elif path == "/te-gzip-chunked":
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
        elif path == "/garbage":
            t.write(b"HTTP/1.1 2x0 Whatever\r\n\r\n")
            t.close()
        elif path == "/hang":
            await asyncio.sleep(3600)
        elif path == "/close":
            self.write(200, b"closing", keep_alive=False)
        elif path == "/upload":
            self.write(200, orjson.dumps({"length": req["body_len"], "sha256": req["sha256"]}),
                       [("content-type", "application/json")], keep_alive=req["keep_alive"])
        elif path == "/resource":
            self.server.serial += 1
            serial = self.server.serial
            if "ms" in q:
                await asyncio.sleep(int(q["ms"]) / 1000)
            headers = [("content-type", "application/json")]
            for param, name in (("cc", "cache-control"), ("etag", "etag"), ("lm", "last-modified"),
                                ("expires", "expires"), ("vary", "vary"), ("tag", "surrogate-key"), ("date", "date")):
                if param in q:
                    headers.append((name, q[param]))
            if q.get("cookie"):
                headers.append(("set-cookie", "session=secret"))
            hdrs = req["headers"]
            body = orjson.dumps({"serial": serial, "consumer": hdrs.get("x-consumer-id"),
                                 "language": hdrs.get("accept-language"), "encoding": hdrs.get("accept-encoding"),
                                 "conditional": hdrs.get("if-none-match") or hdrs.get("if-modified-since")})
            if "bytes" in q:
                body = body + b" " * (int(q["bytes"]) - len(body))
            if q.get("chunked"):
                t.write(b"HTTP/1.1 %d OK\r\n%stransfer-encoding: chunked\r\n\r\n"
                        % (int(q.get("status", "200")), "".join(f"{n}: {v}\r\n" for n, v in headers).encode()))
                for i in range(0, len(body), 1000):
                    piece = body[i:i + 1000]
                    t.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                t.write(b"0\r\n\r\n")
            else:
                self.write(int(q.get("status", "200")), body, headers, keep_alive=req["keep_alive"])
        elif path.startswith("/json"):
            await asyncio.sleep(int(q.get("ms", "0")) / 1000)
            body = orjson.dumps({"path": path, "query": url.query.decode() if url.query else ""})
            self.write(int(q.get("status", "200")), body, [("content-type", "application/json")],
                       keep_alive=req["keep_alive"])
        elif path == "/nocontent":
            self.write(204, keep_alive=req["keep_alive"])
        elif path == "/hop":
            self.write(200, b"hop", [("connection", "x-secret"), ("x-secret", "1"), ("keep-alive", "timeout=5"),
                                     ("x-kept", "yes")], keep_alive=req["keep_alive"])
        else:
            body = orjson.dumps({"method": req["method"], "target": req["target"], "headers": req["headers"],
                                 "body_len": req["body_len"], "port": self.server.port})
            self.write(200, body, [("content-type", "application/json")], keep_alive=req["keep_alive"])


class Upstream:
    """Start with `Upstream().start()`; `.port`, `.url`, `.requests`; `.stop()`."""

    def __init__(self, port: int = 0, ssl=None, fail_with: int | None = None, delay: float = 0.0,
                 host: str = "127.0.0.1"):
        self.port = port
        self.host = host             # another loopback address (127.0.0.2, ...) for several on one port
        self.ssl = ssl
        self.fail_with = fail_with   # answer every request with this status (a sick instance)
        self.delay = delay           # seconds before every answer (a slow instance)
        self.requests: list[dict] = []
        self.serial = 0              # /resource answers counted
        self.connections = 0
        self.open_transports: set = set()
        self.loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "Upstream":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        fut.result(5)
        return self

    async def _start(self):
        self._server = await self.loop.create_server(lambda: _Conn(self), self.host, self.port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    def close_all(self):
        """Close every open connection (the gateway's pooled ones go stale)."""
        def go():
            for t in list(self.open_transports):
                t.close()
        self.loop.call_soon_threadsafe(go)

    def stop(self):
        if not self._thread.is_alive():
            return   # already stopped
        async def shut():
            self._server.close()
            for t in list(self.open_transports):
                t.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class UpstreamProcess:
    """The same upstream as a real process: kill it, pause it (SIGSTOP), resume it."""

    def __init__(self, port: int | None = None, fail_with: int | None = None):
        import subprocess
        import sys

        from tests.support.processes import ROOT, free_port, wait_for

        self.port = port or free_port()
        args = [sys.executable, "-m", "tests.support.upstream", str(self.port)]
        if fail_with:
            args.append(str(fail_with))
        self._args = args
        self._root = ROOT
        self.proc = None
        self._wait_for = wait_for
        self._subprocess = subprocess

    def start(self) -> "UpstreamProcess":
        import os
        import socket

        self.proc = self._subprocess.Popen(self._args, cwd=self._root, env={**os.environ, "PYTHONPATH": self._root})
        self._wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close() or True)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self):
        import signal
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        import signal
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    stop = kill


if __name__ == "__main__":
    import sys
    import time as _time

    u = Upstream(port=int(sys.argv[1]), fail_with=int(sys.argv[2]) if len(sys.argv) > 2 else None).start()
    while True:
        _time.sleep(3600)
