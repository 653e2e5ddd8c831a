"""Active health checks (upstreams.*.health_check).

One checker per gateway: the single worker runs it itself; with several
workers the supervisor runs it and tells every worker of each change, so a
target is checked once per interval for the whole gateway, not once per
worker. A check is `GET path` on a fresh connection (over HTTP/2 for h2c and
http2 upstreams); 2xx and 3xx answers pass. `unhealthy` failures in a row take a target out of rotation,
`healthy` passes in a row bring it back.
"""
from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from urllib.parse import urlsplit

import httptools

try:
    from ..exchange.nghttp2 import SessionOwner
except ImportError:   # built without nghttp2: no target is probed over HTTP/2
    SessionOwner = object

log = logging.getLogger("tollhouse.health")

#: Upstream protocols whose targets are probed over HTTP/2 (upstream/http2.py).
HTTP2_PROTOCOLS = ("h2c", "http2")


class _Status:
    def __init__(self):
        self.status = 0
        self.done = False

    def on_headers_complete(self):
        self.done = True


class _Http2Answer(SessionOwner):
    """The owner of a probe's nghttp2 session (exchange/nghttp2.pyx): keeps the final status."""

    def __init__(self):
        self.status = 0
        self.over = False

    def h2_headers(self, stream_id, category, headers, end_stream, oversize, method=None, path=None, authority=None):
        for name, value in headers:
            if name == b":status" and int(value) >= 200:
                self.status = int(value)

    def h2_closed(self, stream_id, code):
        self.over = True

    def h2_goaway(self, last_stream_id, code):
        self.over = True


async def probe_http2(url: str, path: str, timeout: float, verify: bool = True) -> bool:
    """`GET path` over HTTP/2 (an h2c or http2 upstream's targets): prior knowledge on
    http://, ALPN h2 on https://."""
    from ..exchange import nghttp2

    parts = urlsplit(url)
    secure = parts.scheme == "https"
    ctx = None
    if secure:
        ctx = ssl_module.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_module.CERT_NONE
    answer = _Http2Answer()
    session = nghttp2.Session(answer, False, {})
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or (443 if secure else 80),
                                                           ssl=ctx)
            try:
                session.request([(b":method", b"GET"), (b":scheme", parts.scheme.encode()), (b":path", path.encode()),
                                 (b":authority", parts.netloc.encode()), (b"user-agent", b"tollhouse-health")], [],
                                False)
                writer.write(session.pending())
                while not answer.status and not answer.over:
                    data = await reader.read(65536)
                    if not data:
                        return False
                    session.receive(data)
                    writer.write(session.pending())
                return 200 <= answer.status < 400
            finally:
                writer.close()
    except (OSError, asyncio.TimeoutError, ssl_module.SSLError, nghttp2.Http2Error):
        return False
    finally:
        session.close()


async def probe(url: str, path: str, timeout: float, verify: bool = True, http2: bool = False) -> bool:
    if http2:
        return await probe_http2(url, path, timeout, verify)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ctx = None
    if parts.scheme == "https":
        ctx = ssl_module.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_module.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: tollhouse-health\r\n"
                             f"Connection: close\r\n\r\n".encode())
                state = _Status()
                parser = httptools.HttpResponseParser(state)
                while not state.done:
                    data = await reader.read(4096)
                    if not data:
                        return False
                    parser.feed_data(data)
                return 200 <= parser.get_status_code() < 400
            finally:
                writer.close()
    except (OSError, asyncio.TimeoutError, httptools.HttpParserError, ssl_module.SSLError):
        return False


class HealthChecker:
    """Checks every target of every upstream with a `health_check`; calls
    `on_change(upstream, target_url, healthy)` when a target flips."""

    def __init__(self, config, on_change):
        self.on_change = on_change
        self.tasks: list[asyncio.Task] = []
        self.health: dict[tuple[str, str], bool] = {}
        self.plans = [(name, up) for name, up in config.upstreams.items() if up.health_check is not None]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, up in self.plans:
            for target in up.targets:
                if not target.url:
                    continue   # found by DNS: passive checks (outlier ejection) only
                self.health[(name, target.url)] = True
                self.tasks.append(loop.create_task(self._watch(name, up, target.url)))

    async def _watch(self, name, up, url):
        cfg = up.health_check
        passes = fails = 0
        while True:
            ok = await probe(url, cfg.path, cfg.timeout, up.tls_verify, up.protocol in HTTP2_PROTOCOLS)
            if ok:
                passes, fails = passes + 1, 0
            else:
                passes, fails = 0, fails + 1
            healthy = self.health[(name, url)]
            if healthy and fails >= cfg.unhealthy:
                self._flip(name, url, False)
            elif not healthy and passes >= cfg.healthy:
                self._flip(name, url, True)
            await asyncio.sleep(cfg.interval)

    def _flip(self, name, url, healthy):
        self.health[(name, url)] = healthy
        log.warning("upstream %s target %s is %s", name, url, "healthy again" if healthy else "unhealthy")
        self.on_change(name, url, healthy)

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.tasks = []
