"""WebSocket relaying (docs/contract.md §2 route `websocket`, §6; docs/protocols.md).

On a route with `websocket`, a WebSocket handshake (`Upgrade` with
`Sec-WebSocket-Key`) passes every other policy of the route first (auth, rate
limits, ip, cors: it is this policy's request hook, in the last phase), then
goes to a target of the route's upstream on a connection of its own (not the
keep-alive pool: it will never come back) with the usual forwarded headers.
After the upstream's 101 the client connection is taken over and bytes are
relayed both ways, untouched, with backpressure on both sides. The relay
reads only frame headers (RFC 6455 §5.2), never payloads, to count message
sizes and messages, and to know where a frame ends so the gateway's own
control frames (pings, closes) are written between frames, never inside one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time

import httptools

from ..config.schema import Duration, Field, Schema, Size, section_or_true
from ..pipeline import Policy, Reply
from ..registry import PolicyKind
from ..exchange.request import find_header
from ..exchange.forwarding import choose_target

log = logging.getLogger("tollhouse.websocket")

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
NORMAL, GOING_AWAY, TOO_BIG = 1000, 1001, 1009
_CLOSE_WAIT = 1.0   # seconds a peer gets to answer the gateway's close frame before the socket is cut
_HEAD_LIMIT = 64 * 1024


class WebSocketSettings(Schema):
    idle_timeout = Field(Duration(min=0.01), 300.0, "close with 1000 after this long without a frame either way")
    max_message_bytes = Field(Size(min=1), 1 << 20, "a larger message (all its fragments) closes with 1009")
    ping_interval = Field(Duration(), 0.0, "send the client a ping this often (0: never); pongs count as traffic")


class FrameScanner:
    """Follows one direction's frames by their headers alone: where each frame ends,
    how big the current message is, and which control frames went by."""

    __slots__ = ("head", "remaining", "message", "limit", "messages", "closed_with")

    def __init__(self, limit: int):
        self.head = b""          # a frame header split across reads
        self.remaining = 0       # payload bytes of the current frame still to come
        self.message = 0         # bytes of the data message in progress
        self.limit = limit
        self.messages = 0        # data messages completed
        self.closed_with = None  # the close code seen in this direction (None: none yet)

    @property
    def at_boundary(self) -> bool:
        return self.remaining == 0 and not self.head

    def feed(self, data: bytes) -> int:
        """Scan `data`; returns -1 when every byte may be relayed, else the offset of the
        header of a frame that makes its message too big (nothing from there on may go)."""
        pos, end = 0, len(data)
        while pos < end:
            if self.remaining:
                step = min(self.remaining, end - pos)
                self.remaining -= step
                pos += step
                continue
            start = pos - len(self.head)
            buf = self.head + data[pos:pos + 14]
            need = 2
            if len(buf) >= 2:
                size = buf[1] & 0x7F
                need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if buf[1] & 0x80 else 0)
            if len(buf) < need:
                self.head = buf
                return -1
            used = need - len(self.head)
            self.head = b""
            fin, opcode, size = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x7F
            if size == 126:
                size = struct.unpack_from("!H", buf, 2)[0]
            elif size == 127:
                size = struct.unpack_from("!Q", buf, 2)[0]
            if opcode < OP_CLOSE:   # data: a message's first frame, or one of its continuations
                self.message = size if opcode != OP_CONTINUATION else self.message + size
                if self.message > self.limit:
                    return max(start, 0)
                if fin:
                    self.messages += 1
                    self.message = 0
            elif opcode == OP_CLOSE:
                self.closed_with = -1   # the code is in the payload, not read: "a close went by"
            pos += used
            self.remaining = size
        return -1


def _frame(opcode: int, payload: bytes = b"", masked: bool = False) -> bytes:
    """A single control frame (short payload). Frames to the upstream are masked: the
    gateway is its client (RFC 6455 §5.3)."""
    if not masked:
        return bytes((0x80 | opcode, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + body


def close_frame(code: int, masked: bool = False) -> bytes:
    return _frame(OP_CLOSE, struct.pack("!H", code), masked)


class _Side:
    """One socket of a session, as an asyncio protocol."""

    def __init__(self, session, name: str):
        self.session = session
        self.name = name          # "client" or "upstream"
        self.transport = None
        self.paused = False       # the other side cannot take more: reading here is paused

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.session.received(self, data)

    def eof_received(self):
        return False   # close this side; connection_lost follows

    def connection_lost(self, exc):
        self.session.side_lost(self)

    # Backpressure: when this side's socket cannot take more, stop reading the other.
    def pause_writing(self):
        other = self.session.other(self)
        if other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self):
        other = self.session.other(self)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()


class _Handshake(_Side):
    """The upstream side until its answer to the handshake has been read."""

    def __init__(self, session):
        super().__init__(session, "upstream")
        self.parser = httptools.HttpResponseParser(self)
        self.head_done = asyncio.get_running_loop().create_future()
        self.headers: list[bytes] = []
        self.body = b""
        self.rest = b""
        self.size = 0

    def data_received(self, data):
        if self.head_done.done():
            if self.session.relaying:
                self.session.received(self, data)
            else:
                self.rest += data
            return
        self.size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            self.rest = data[offset:]
            self._done()
        except httptools.HttpParserError as e:
            if not self.head_done.done():
                self.head_done.set_exception(ConnectionError(f"invalid response: {e}"))
        if self.size > _HEAD_LIMIT and not self.head_done.done():
            self.head_done.set_exception(ConnectionError("response head too large"))

    def on_header(self, name, value):
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body):
        if len(self.body) < _HEAD_LIMIT:
            self.body += body

    def on_message_complete(self):
        self._done()

    def _done(self):
        if not self.head_done.done():
            self.head_done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc):
        if not self.head_done.done():
            if self.parser.get_status_code() and not self.parser.should_keep_alive():
                self._done()   # a close-delimited answer ended
            else:
                self.head_done.set_exception(ConnectionError("the upstream closed the connection"))
            return
        super().connection_lost(exc)


class Session:
    """One relayed WebSocket: its two sides, their frame scanners, its timers."""

    def __init__(self, policy: "WebSocketPolicy", exchange, registry: "Sessions"):
        self.policy = policy
        self.settings = policy.settings   # kept for the session's life: a reload does not change it
        self.route = policy.route_name
        self.exchange = exchange
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.client = _Side(self, "client")
        self.upstream: _Side | None = None
        limit = self.settings.max_message_bytes
        self.scanners = {"client": FrameScanner(limit), "upstream": FrameScanner(limit)}
        self.bytes = {"client": 0, "upstream": 0}   # bytes received from each side
        self.relaying = False
        self.closing_code = None
        self.last_activity = time.monotonic()
        self.last_ping = self.last_activity
        self.timer = None
        self.ended = False

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client

    def start(self, leftover_upstream: bytes) -> None:
        self.relaying = True
        self.registry.opened(self)
        self._schedule()
        if leftover_upstream:
            self.received(self.upstream, leftover_upstream)

    def received(self, side: _Side, data: bytes) -> None:
        if self.ended:
            return
        self.last_activity = time.monotonic()
        self.bytes[side.name] += len(data)
        scanner = self.scanners[side.name]
        before = scanner.messages
        cut = scanner.feed(data)
        if scanner.messages != before:
            self.registry.messages(self.route, "in" if side is self.client else "out", scanner.messages - before)
        other = self.other(side)
        if cut >= 0:
            # A message over max_message_bytes: what came before it goes, then 1009 both ways.
            if cut:
                other.transport.write(data[:cut])
            self.close(TOO_BIG)
            return
        if other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def side_lost(self, side: _Side) -> None:
        # One socket ended: the other is closed once what is written to it has gone.
        other = self.other(side)
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.close()
        if other is None or other.transport is None or other.transport.is_closing():
            self.end()

    def close(self, code: int) -> None:
        """The gateway ends the session: a close frame to each side (between frames), then
        the sockets are cut if the peers have not closed them within a moment."""
        if self.closing_code is not None or self.ended:
            return
        self.closing_code = code
        for side, masked in ((self.client, False), (self.upstream, True)):
            if side is None or side.transport is None or side.transport.is_closing():
                continue
            # The direction towards this side: frames from the other one.
            if self.scanners[self.other(side).name].at_boundary:
                side.transport.write(close_frame(code, masked))
            else:
                side.transport.abort()   # inside a frame: no close frame can be placed
        self.loop.call_later(_CLOSE_WAIT, self._cut)

    def _cut(self) -> None:
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.abort()
        self.end()

    def _schedule(self) -> None:
        s = self.settings
        step = min(s.idle_timeout, s.ping_interval or s.idle_timeout) / 4
        self.timer = self.loop.call_later(max(step, 0.01), self._tick)

    def _tick(self) -> None:
        if self.ended or self.closing_code is not None:
            return
        now = time.monotonic()
        s = self.settings
        if now - self.last_activity >= s.idle_timeout:
            self.close(NORMAL)
            return
        if s.ping_interval and now - self.last_ping >= s.ping_interval and self.scanners["upstream"].at_boundary:
            self.last_ping = now
            if self.client.transport is not None and not self.client.transport.is_closing():
                self.client.transport.write(_frame(OP_PING, b"tollhouse"))
        self._schedule()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self.registry.closed(self)
        ex = self.exchange
        ex.bytes_sent = self.bytes["upstream"]
        client_in, upstream_in = self.scanners["client"].messages, self.scanners["upstream"].messages
        ex.remember(self.policy.slot, f"closed {self.closing_code or 'by peer'}; messages in {client_in} "
                                      f"out {upstream_in}; bytes in {self.bytes['client']} out {self.bytes['upstream']}")
        ex.finish()   # one access log line, now: its duration is the session's


class Sessions:
    """A worker's open sessions (the policy kind's per-worker service): counted per
    route, closed with 1001 on drain, and when a reload removes their route."""

    def __init__(self, stats):
        self.stats = stats
        self.open: set[Session] = set()
        self.draining = False

    def opened(self, session: Session) -> None:
        self.open.add(session)
        key = ("websocket_sessions", (("route", session.route),))
        self.stats.gauges[key] = self.stats.gauges.get(key, 0) + 1

    def closed(self, session: Session) -> None:
        self.open.discard(session)
        key = ("websocket_sessions", (("route", session.route),))
        self.stats.gauges[key] = max(0, self.stats.gauges.get(key, 0) - 1)

    def messages(self, route: str, direction: str, n: int) -> None:
        self.stats.inc("websocket_messages", (("direction", direction), ("route", route)), n)

    def reconfigure(self, config) -> "Sessions":
        """A reload: sessions keep the settings they started with; those whose route is
        gone are closed with 1001 after shutdown_grace. The same service goes on."""
        names = {r.name or f"route-{i}" for i, r in enumerate(config.routes) if r.websocket is not None}
        gone = [s for s in self.open if s.route not in names]
        if gone:
            loop = asyncio.get_running_loop()
            for s in gone:
                loop.call_later(config.shutdown_grace, s.close, GOING_AWAY)
        return self

    def drain(self) -> None:
        self.draining = True
        for s in list(self.open):
            s.close(GOING_AWAY)

    def busy(self) -> bool:
        return bool(self.open)

    def close(self) -> None:
        for s in list(self.open):
            s._cut()


class WebSocketPolicy(Policy):
    """The handshake and the relay of its route's WebSocket sessions."""

    __slots__ = ("settings", "route_name", "sessions")

    phase = "transform"   # after every other policy of the route
    outcome = "websocket"

    def __init__(self, settings: WebSocketSettings, context, sessions: Sessions):
        super().__init__(settings, context)
        self.settings = settings
        self.route_name = context.route_name
        self.sessions = sessions
        stats = context.stats
        stats.declare_gauge("websocket_sessions", (("route", self.route_name),))
        for direction in ("in", "out"):
            stats.declare("websocket_messages", (("direction", direction), ("route", self.route_name)))

    def on_request(self, exchange):
        if not exchange.upgrade:
            return None   # a plain request on this route is proxied as usual
        if find_header(exchange.headers, b"sec-websocket-key") is None:
            return Reply.problem(400, "Bad Request", "only WebSocket upgrades are relayed here")
        if self.sessions.draining:
            return Reply.problem(503, "Service Unavailable", "the gateway is shutting down",
                                 headers=[("retry-after", "1")])
        return self.handshake(exchange)

    async def handshake(self, exchange):
        route = exchange.route
        pool = route.choose_pool(exchange)
        target = choose_target(pool, exchange)
        if isinstance(target, Reply):
            return target
        session = Session(self, exchange, self.sessions)
        upstream = _Handshake(session)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: upstream, target.host, target.port, ssl=target.ssl,
                server_hostname=target.host if target.ssl else None), target.settings.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            pool.attempt_ended(target, False)
            return Reply.problem(502, "Bad Gateway", f"cannot connect to the upstream: {type(e).__name__}")
        session.upstream = upstream
        path = exchange.path if route.path_kept else route.upstream_path(exchange.path, exchange.params)
        head = target.codec.request_head(exchange, target, b"GET", path)
        head.append(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n")
        transport.write(b"".join(head))
        try:
            status = await asyncio.wait_for(upstream.head_done, route.timeout)
        except (ConnectionError, asyncio.TimeoutError) as e:
            transport.abort()
            pool.attempt_ended(target, False)
            timeout = isinstance(e, asyncio.TimeoutError)
            return Reply.problem(504 if timeout else 502, "Gateway Timeout" if timeout else "Bad Gateway",
                                 "the upstream did not answer the handshake in time" if timeout
                                 else f"the upstream failed the handshake: {e}")
        pool.attempt_ended(target, status < 500)
        if status != 101 or exchange.finished:
            transport.close()
            if exchange.finished:
                return None
            # Refused (403, 426...): its answer goes to the client as it is.
            kept = [h for h in upstream.headers if _name(h) not in _NOT_RELAYED]
            return Reply(status, upstream.body, lines=kept)
        # 101: the relay begins. The client gets the upstream's handshake headers.
        exchange.status = 101
        kept = [h for h in upstream.headers if _name(h) not in (b"connection", b"upgrade", b"content-length")]
        exchange.conn.write(b"".join([b"HTTP/1.1 101 Switching Protocols\r\n", *kept, b"x-request-id: ",
                                      exchange.request_id, b"\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"]))
        exchange.take_over(session.client)
        session.start(upstream.rest)
        return None


def _name(line: bytes) -> bytes:
    return line[:line.find(b":")].strip().lower()


_NOT_RELAYED = frozenset((b"connection", b"upgrade", b"keep-alive", b"transfer-encoding", b"content-length",
                          b"proxy-connection", b"te", b"trailer"))


KIND = PolicyKind(
    "websocket", phase=WebSocketPolicy.phase, key="websocket", outcome=WebSocketPolicy.outcome,
    service=lambda config, store, stats, worker: Sessions(stats),
    build=lambda settings, context, services: None if settings is None else WebSocketPolicy(
        settings, context, services.workers["websocket"]),
    field=Field(section_or_true(WebSocketSettings), None,
                "{idle_timeout, max_message_bytes, ping_interval}: Upgrade: websocket is relayed on this route "
                "only; see docs/protocols.md"))
