"""Pooled keep-alive connections to upstream targets.

Shaped after aiohttp's connector: per target a deque of idle connections
(most recently used first, so cold ones age out), a limit on open
connections with FIFO waiters, liveness checked on checkout, and idle
connections reaped by the worker's sweeper.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from ..clock import CLOCK
from ..flow import CLIENT_FULL, FlowControl, Gathered
from .balancer import make_balancer
from .concurrency import AdaptiveConcurrency
from .discovery import DnsTargets
from .locality import Localities, place
from .breaker import STATE_NAMES, CircuitBreaker

log = logging.getLogger("tollhouse.upstream")


# Response header names with a job of their own (everything else is relayed as sent).
DROPPED = 0             # hop-by-hop (RFC 9110 §7.6.1) or the gateway's own (X-Request-ID)
CONTENT_LENGTH = 1      # framing: noted and kept
TRANSFER_ENCODING = 2   # framing: noted, never relayed (the client's framing is redone)
CONNECTION = 3          # hop-by-hop, and names more hop-by-hop headers
DATE = 4                # noted and kept: a response without one gets the gateway's (RFC 9110 §6.6.1)
_RESPONSE_SPECIAL = {b"content-length": CONTENT_LENGTH, b"transfer-encoding": TRANSFER_ENCODING,
                     b"connection": CONNECTION, b"date": DATE, b"keep-alive": DROPPED, b"proxy-connection": DROPPED,
                     b"te": DROPPED, b"trailer": DROPPED, b"upgrade": DROPPED, b"x-request-id": DROPPED}


_SPECIAL_LENGTHS = frozenset(len(n) for n in _RESPONSE_SPECIAL)


class UpstreamConnection:   # an asyncio protocol by its methods (a compiled class cannot subclass asyncio.Protocol)
    """One connection to a target; relays one exchange at a time.

    httptools callbacks feed the bound exchange through its sink interface
    (exchange/sink.py): `upstream_head`, `upstream_body`, `upstream_done`,
    `upstream_failed`, `upstream_closed`, `upstream_writable`. Its `codec` frames
    the requests it sends (HTTP/1.1: exchange/http1.py `Http1Upstream`).
    """

    __slots__ = ("target", "transport", "parser", "exchange", "closed", "idle_since", "headers", "reused",
                 "got_bytes", "flow", "last_read", "head_only", "loop", "content_length", "chunked",
                 "connection_tokens", "outgoing", "bad_coding", "dated", "codec")

    def __init__(self, target: "TargetPool"):
        self.target = target
        self.codec = target.codec
        self.transport = None
        self.parser = None
        self.exchange = None
        self.closed = False
        self.idle_since = 0.0
        self.headers: list = []
        self.reused = False
        self.got_bytes = False
        self.flow = None   # why reading is paused (from connection_made)
        self.last_read = 0.0
        self.head_only = False
        self.loop = target.loop
        self.content_length = None
        self.chunked = False
        self.connection_tokens = None
        self.bad_coding = False
        self.dated = False   # the response head carried a Date
        self.outgoing = None   # Gathered writes (made by the first send: it knows the worker)

    # asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.flow = FlowControl(transport)
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data):
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the peer broke protocol; discard it.
            self.abort()
            return
        self.got_bytes = True
        self.last_read = CLOCK.now
        worker = ex.worker
        worker.reading = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if e.__context__ is not None:
                # "User callback error": a bug of ours in a callback, not the upstream's fault.
                log.error("relaying an upstream response failed", exc_info=e.__context__)
            if self.exchange is not None:
                self.exchange.upstream_failed("invalid", f"invalid response from upstream: {e}")
            self.abort()
        finally:
            worker.reading = False
            worker.flush_if_alone()

    def eof_received(self):
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc):
        self.closed = self.flow.closed = True
        self.target.lost(self)
        ex = self.unbind()
        if ex is not None:
            ex.upstream_closed(self, exc)

    def pause_writing(self):
        ex = self.exchange
        if ex is not None:
            ex.upstream_writable(False)

    def resume_writing(self):
        ex = self.exchange
        if ex is not None:
            ex.upstream_writable(True)

    # httptools callbacks ---------------------------------------------------
    def on_message_begin(self):
        self.headers = []
        self.content_length = None
        self.chunked = False
        self.bad_coding = False
        self.dated = False
        self.connection_tokens = None

    def on_header(self, name, value):
        # Classified here, once: framing and hop-by-hop headers (RFC 9110
        # §7.6.1) are never relayed; the exchange redoes the framing. Only
        # names as long as a special one can be special (saves a lower()).
        if len(name) in _SPECIAL_LENGTHS:
            kind = _RESPONSE_SPECIAL.get(name.lower())
            if kind is not None:
                if kind == CONTENT_LENGTH:
                    self.content_length = value   # noted and relayed
                elif kind == DATE:
                    self.dated = True             # noted and relayed
                elif kind == TRANSFER_ENCODING:
                    # Anything but one "chunked" is a coding the client could not be told
                    # about once the header is dropped (RFC 9112 §6.1, §6.3): 502, never relayed.
                    if self.chunked or value.strip().lower() != b"chunked":
                        self.bad_coding = True
                    self.chunked = True
                    return
                elif kind == CONNECTION:
                    tokens = value.lower()
                    if tokens != b"keep-alive" and tokens != b"close":
                        self.connection_tokens = (tokens if self.connection_tokens is None
                                                  else self.connection_tokens + b"," + tokens)
                    return
                else:
                    return   # dropped
        self.headers.append(b"".join((name, b": ", value, b"\r\n")))   # one bytes made, not three

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        if status < 200:
            return  # 1xx interim responses (e.g. 103) are not relayed
        ex = self.exchange
        if ex is not None and self.bad_coding:
            ex.upstream_failed("invalid", "the upstream answered with an unsupported Transfer-Encoding")
            return
        if ex is not None:
            ex.upstream_head(self, status, self.headers, self.parser.should_keep_alive())
            if self.head_only and self.exchange is not None:
                # A response to HEAD has no body whatever its framing says;
                # llhttp cannot be told, so the message ends here.
                self.parser = httptools.HttpResponseParser(self)
                self.finish_message()

    def on_body(self, body):
        ex = self.exchange
        if ex is not None:
            ex.upstream_body(body)

    def on_message_complete(self):
        if self.head_only or self.parser.get_status_code() < 200:
            return
        self.finish_message()

    def finish_message(self):
        ex = self.unbind()
        if ex is not None:
            ex.upstream_done(self)

    # pool side -------------------------------------------------------------
    def send(self, exchange, parts: list, head_only: bool):
        """Bind `exchange` and send its request head and any body already read (`parts`,
        as its protocol's codec made them: exchange/codec.py UpstreamCodec)."""
        self.exchange = exchange
        self.target.in_flight += 1
        self.got_bytes = False
        self.head_only = head_only
        self.last_read = CLOCK.now
        self.flow.resume(CLIENT_FULL)   # a slow client of the exchange before does not pause this one
        if self.outgoing is None:
            self.outgoing = Gathered(self.transport, exchange.worker)
        self.outgoing.write(b"".join(parts))

    def unbind(self):
        """The exchange is done with this connection (which counts no more as in flight); returns it."""
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            self.target.in_flight -= 1
        return ex

    def abort(self):
        self.unbind()
        if self.outgoing is not None:
            self.outgoing.drop()
        if self.transport is not None and not self.closed:
            self.closed = self.flow.closed = True
            self.transport.abort()


class TargetPool:
    """Connections to one target (scheme://host:port)."""

    __slots__ = ("url", "name", "weight", "host", "port", "host_header", "ssl", "settings", "loop", "idle", "open",
                 "in_flight", "waiters", "max_connections", "consecutive_failures", "ejected_until", "ejections",
                 "healthy", "codec", "region", "zone")

    def __init__(self, url: str, weight: int, settings, loop, codec=None):
        parts = urlsplit(url)
        self.url = url
        self.region = None   # its region (the target's `region`; upstream locality)
        self.zone = None     # and zone (`locality.zone` prefers the gateway's own)
        self.codec = codec   # how requests to it are framed: its protocol's (registry.UpstreamProtocol)
        self.name = url
        self.weight = weight
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode()
        self.ssl = _client_ssl(settings) if parts.scheme == "https" else None
        self.settings = settings
        self.loop = loop
        self.idle: deque[UpstreamConnection] = deque()
        self.open = 0                 # connected or connecting
        self.in_flight = 0
        self.waiters: deque = deque()
        self.max_connections = settings.max_connections
        # Passive outlier detection (upstreams.*.outlier)
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.healthy = True   # active health checks (upstreams.*.health_check)

    def can_open(self) -> bool:
        return self.open < self.max_connections

    # --- what an exchange asks of the pool ----------------------------------------------
    def checkout(self) -> UpstreamConnection | None:
        """A live idle connection (the most recently used), or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def reserve(self) -> bool:
        """Take a slot for a new connection (then `connect()`), if max_connections allows."""
        if self.open < self.max_connections:
            self.open += 1
            return True
        return False

    def wait(self, waiter) -> None:
        """Queue (FIFO) for a connection: `waiter.accept_connection(target, conn)` or
        `waiter.accept_slot(target)` (a slot reserved for it) is called; False = gone."""
        self.waiters.append(waiter)

    def leave(self, waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    async def connect(self) -> UpstreamConnection:
        """Open a new connection (the caller has reserved the slot in `open`)."""
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl,
                                            server_hostname=self.host if self.ssl else None),
                self.settings.connect_timeout)
        except BaseException:
            self.open -= 1
            self.wake_waiter()
            raise
        conn.reused = False
        return conn

    def release(self, conn: UpstreamConnection):
        """A finished, reusable connection: to a waiter, else to the idle deque."""
        if conn.closed:
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.accept_connection(self, conn):
                return
        # Reading stays on while idle, so that an upstream close is noticed.
        conn.idle_since = CLOCK.now
        self.idle.append(conn)

    def lost(self, conn: UpstreamConnection):
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self.wake_waiter()

    def wake_waiter(self):
        while self.waiters and self.can_open():
            waiter = self.waiters.popleft()
            self.open += 1
            if waiter.accept_slot(self):
                return
            self.open -= 1

    def reap(self, now: float):
        """Close idle connections older than the upstream's idle_timeout."""
        limit = now - self.settings.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since < limit:
            idle.popleft().abort()

    def close(self):
        while self.idle:
            self.idle.pop().abort()


class UpstreamPool:
    """An upstream service: its targets and how requests are spread over them."""

    __slots__ = ("name", "settings", "targets", "balancer", "single", "breaker", "outlier", "retries",
                 "active_requests", "retries_in_flight", "ejection_count", "retry_count", "_next", "signature",
                 "localities", "dns", "concurrency")

    def __init__(self, name: str, settings, loop, codec=None, target_pool=None):
        self.name = name
        self.settings = settings
        make = target_pool or TargetPool   # the protocol's (registry.UpstreamProtocol.target_pool)
        given = [t for t in settings.targets if t.url]   # the rest come from DNS (upstream/discovery.py)
        self.targets = [make(t.url, t.weight, settings, loop, codec) for t in given]
        for target, t in zip(self.targets, given):
            place(target, t)
        self.balancer = make_balancer(settings.balancer, self.targets, settings.hash_key)
        self.single = self.targets[0] if len(self.targets) == 1 else None
        locality = getattr(settings, "locality", None)
        # Locality-aware balancing (upstream/locality.py): priority levels by region.
        self.localities = Localities(locality, self.targets, settings) if locality is not None else None
        if self.localities is not None:
            self.single = None
        self.dns = DnsTargets(self, settings, loop, make, codec) if len(given) < len(settings.targets) else None
        self.concurrency = AdaptiveConcurrency(name, settings.adaptive, loop) \
            if getattr(settings, "concurrency", "") == "adaptive" else None
        self.breaker = CircuitBreaker(settings.circuit_breaker) if settings.circuit_breaker is not None else None
        self.outlier = settings.outlier
        self.retries = settings.retries
        self.active_requests = 0
        self.retries_in_flight = 0
        self.ejection_count = 0
        self.retry_count = 0
        self._next = 0
        self.signature = repr(settings)

    def choose(self, exchange=None, tried=None) -> TargetPool:
        """The balancer's pick, or another usable target when that one is
        unhealthy, ejected or already tried (the pick itself if none is)."""
        if self.localities is not None:
            return self.localities.choose(self, exchange, tried)
        target = self.single or self.balancer.pick(exchange)
        if self.usable(target, tried):
            return target
        return self.alternative(tried) or target

    # --- request and retry accounting (the retry budget) ---------------------------------
    def request_started(self) -> None:
        self.active_requests += 1

    def request_ended(self, retried: bool) -> None:
        self.active_requests -= 1
        if retried:
            self.retries_in_flight -= 1

    def retry_started(self, first: bool) -> None:
        self.retry_count += 1
        if first:
            self.retries_in_flight += 1

    def retry_allowed(self) -> bool:
        """The budget: retries cannot multiply an outage's load (Envoy's retry budget, minimum 3)."""
        return self.retries_in_flight < max(3.0, self.retries.budget * self.active_requests)

    def usable(self, target, tried) -> bool:
        return target.healthy and target.ejected_until <= CLOCK.now and (tried is None or target not in tried)

    def set_health(self, url: str, healthy: bool) -> None:
        for t in self.targets:
            if t.url == url:
                t.healthy = healthy

    def alternative(self, tried) -> TargetPool | None:
        """A target that is neither ejected nor already tried, rotating among them."""
        n = len(self.targets)
        for i in range(n):
            t = self.targets[(self._next + i) % n]
            if self.usable(t, tried):
                self._next = (self._next + i + 1) % n
                return t
        return None

    # --- outcomes: circuit breaker and passive outlier detection --------------------------
    def attempt_ended(self, target, ok: bool) -> None:
        """Count one attempt's outcome (failures: connect errors, resets, timeouts,
        invalid answers, 5xx) for the circuit breaker and outlier detection."""
        if self.breaker is not None:
            self.breaker.record(ok)
        if ok:
            target.consecutive_failures = 0
            return
        cfg = self.outlier
        if cfg is None:
            return
        target.consecutive_failures += 1
        if target.consecutive_failures < cfg.consecutive_failures or target.ejected_until > CLOCK.now:
            return
        ejected = _ejected(self.targets)
        if ejected + 1 > cfg.max_ejected * len(self.targets):
            return   # max_ejected: keep enough targets in rotation
        target.ejections += 1
        target.ejected_until = CLOCK.now + cfg.ejection * target.ejections
        target.consecutive_failures = 0
        self.ejection_count += 1

    def reap(self, now: float):
        for t in self.targets:
            t.reap(now)

    def close(self):
        if self.dns is not None:
            self.dns.close()
        for t in self.targets:
            t.close()

    def status(self) -> dict:
        return {
            "balancer": self.settings.balancer,
            "circuit": STATE_NAMES[self.breaker.state] if self.breaker is not None else None,
            "targets": [{"url": t.url, "weight": t.weight, "open_connections": t.open, "idle_connections": len(t.idle),
                         "in_flight": t.in_flight, "waiting": len(t.waiters),
                         "healthy": t.healthy,
                         "ejected": t.ejected_until > CLOCK.now,
                         "ejected_for": round(max(0.0, t.ejected_until - CLOCK.now), 3)} for t in self.targets],
        }


def _ejected(targets) -> int:
    # Outside the method: the compiled build allows no closure in it (setup.py).
    return sum(1 for t in targets if t.ejected_until > CLOCK.now)


def _client_ssl(settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    if not settings.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
