"""Raw-socket HTTP client for protocol tests: exact bytes out, parsed responses in."""
from __future__ import annotations

import http.client
import socket


class _KeepOpen:
    """HTTPResponse closes its file at the end of a body; the next response needs it."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def close(self):
        pass


class _SockLike:
    def __init__(self, f):
        self._f = _KeepOpen(f)

    def makefile(self, *a, **k):
        return self._f


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        r = http.client.HTTPResponse(_SockLike(self.file), method=method)
        r.begin()
        r.body = r.read()
        return r

    def closed(self, timeout: float = 2.0) -> bool:
        """True when the server has closed the connection (EOF)."""
        self.sock.settimeout(timeout)
        try:
            return self.file.read(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def request(port: int, data: bytes, method: str = "GET") -> http.client.HTTPResponse:
    c = RawClient(port)
    try:
        c.send(data)
        return c.response(method)
    finally:
        c.close()
