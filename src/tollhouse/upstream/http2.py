"""Upstreams spoken to in HTTP/2: `protocol: h2c` (cleartext, prior knowledge), `http2`
(TLS, ALPN h2) and `grpc` (grpc:// and grpcs:// targets, for gRPC passthrough).

A target's pool (`Http2TargetPool`) keeps a few multiplexed connections
(`Http2Session`, nghttp2 on the client side) and hands each request a stream
of one of them (`Http2StreamConnection`), never more streams on a connection
than the peer's SETTINGS_MAX_CONCURRENT_STREAMS. The stream stands in for an
HTTP/1.1 upstream connection (upstream/pool.py): the exchange sends, feeds and
is fed through the same methods, so balancing, health, retries, breakers and
tracing work unchanged. `max_connections` bounds the connections per target;
a request that finds every stream slot taken waits as it does for HTTP/1.1.
A stream the peer refused (REFUSED_STREAM, or above a GOAWAY's last stream
id) was never processed: it is retried as a pooled HTTP/1.1 connection that
closed unused is (docs/http2.md).
"""
from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from ..clock import CLOCK
from ..config.schema import error_at
from ..exchange.http2 import HTTP2_UPSTREAM
from ..flow import FlowControl, Gathered, PulledOutput
from ..registry import UpstreamProtocol
from .pool import TargetPool, UpstreamConnection, _client_ssl

try:
    from ..exchange import nghttp2
    from ..exchange.nghttp2 import SessionOwner
except ImportError:   # built without libnghttp2: the protocols are refused by `tollhouse check`
    nghttp2 = None
    SessionOwner = object

log = logging.getLogger("tollhouse.upstream.http2")

#: Streams assumed open-able on a new connection until the peer's SETTINGS say (RFC 9113 §6.5.2: unlimited).
_ASSUMED_STREAMS = 100
#: Each response stream's receive window: a slow client pauses its stream, not the connection.
_WINDOW = 1 << 20


class StreamWindow(FlowControl):
    """A response stream's reading, paused for named reasons (flow.CLIENT_FULL): while paused,
    received bytes are not given back to the upstream's window for this stream."""

    def __init__(self, stream):
        super().__init__(None)
        self.stream = stream
        self.bits = 0

    def pause(self, reason: int) -> None:
        self.bits |= reason

    def resume(self, reason: int) -> None:
        if self.bits & reason:
            self.bits &= ~reason
            if not self.bits:
                self.stream.consume_held()


class StreamOutput(Gathered):
    """A request stream's body towards the upstream: queued in the session, which sends it
    as the upstream's windows allow."""

    def __init__(self, stream):
        super().__init__(None, None)
        self.stream = stream

    def write(self, chunk: bytes) -> None:
        self.stream.send_body(chunk)

    def end(self, trailers=None) -> None:
        self.stream.end_body(trailers)

    def flush(self) -> None:
        pass

    def drop(self) -> None:
        pass


class Http2StreamConnection(UpstreamConnection):
    """One request's stream on an upstream HTTP/2 connection, standing in for an HTTP/1.1
    upstream connection (see the module's doc)."""

    def __init__(self, target, session):
        super().__init__(target)
        self.session = session
        self.stream_id = 0
        self.flow = StreamWindow(self)
        self.outgoing = StreamOutput(self)
        self.held = 0
        self.head_seen = False
        self.reused = session.used
        self.refused = False   # the peer never processed it: safe to retry
        self.pending = True    # handed out, not yet sent: holds one of the session's stream slots

    # what the exchange calls -------------------------------------------------
    def send(self, exchange, parts: list, head_only: bool):
        pairs, lines = parts[0]
        body = parts[1:]
        self.exchange = exchange
        self.target.in_flight += 1
        self.head_only = head_only
        self.got_bytes = False
        self.last_read = CLOCK.now
        session = self.session
        self.unreserve()
        if session.worker is None:
            session.worker = exchange.worker   # its writes join the worker's outbox
        ended = exchange.body_done
        stream_id = session.session.request(pairs, lines, bool(body) or not ended)
        if stream_id < 0:
            self.refused = True
            self.session.loop.call_soon(self.lost, None)
            return
        self.stream_id = stream_id
        session.streams[stream_id] = self
        session.used = True
        for chunk in body:
            session.session.send_data(stream_id, chunk)
        if ended and body:
            session.session.end_data(stream_id)
        session.schedule()

    def unreserve(self) -> None:
        if self.pending:
            self.pending = False
            self.session.reserved -= 1

    def send_body(self, chunk: bytes) -> None:
        if self.stream_id <= 0:
            return
        if self.session.session.send_data(self.stream_id, chunk) and self.exchange is not None:
            self.exchange.upstream_writable(False)   # the upstream's window is shut: read no more from the client
        self.session.schedule()

    def end_body(self, trailers=None) -> None:
        if self.stream_id > 0:
            self.session.session.end_data(self.stream_id, trailers)
            self.session.schedule()

    def abort(self):
        """The exchange is done with this stream before it ended: RST_STREAM CANCEL."""
        if self.pending:
            self.unreserve()
            self.session.stream_done()
        self.unbind()
        if not self.closed:
            self.closed = True
            if self.stream_id > 0:
                self.session.cancel(self)

    def consume_held(self) -> None:
        if self.held and self.stream_id > 0:
            self.session.session.consume(self.stream_id, self.held)
            self.held = 0
            self.session.schedule()

    # what the session calls ---------------------------------------------------
    def head(self, headers: list, end_stream: bool) -> None:
        status = 0
        lines = []
        content_length = None
        dated = False
        for name, value in headers:
            if name[0] == 58:   # b":"
                if name == b":status":
                    status = int(value)
                continue
            if name == b"content-length":
                content_length = value
            elif name == b"date":
                dated = True
            elif name == b"x-request-id":
                continue   # the gateway's own (connection-specific fields: nghttp2 refuses them)
            lines.append(name + b": " + value + b"\r\n")
        if status < 200:
            return   # 1xx: not relayed
        self.head_seen = True
        self.got_bytes = True
        self.last_read = CLOCK.now
        self.content_length = content_length
        self.dated = dated
        self.chunked = False
        self.connection_tokens = None
        ex = self.exchange
        if end_stream:
            self.head_only = True   # trailers-only (a gRPC status): no body follows
            if ex is not None:
                ex.upstream_trailers(lines, False)   # a gRPC status is in the head
        if ex is not None:
            ex.upstream_head(self, status, lines, True)

    def trailers(self, headers: list) -> None:
        ex = self.exchange
        if ex is None:
            return
        lines = []
        for name, value in headers:
            if name[0] != 58:
                lines.append(name + b": " + value + b"\r\n")
        ex.upstream_trailers(lines)

    def body(self, data: bytes) -> None:
        self.last_read = CLOCK.now
        ex = self.exchange
        if ex is not None:
            ex.upstream_body(data)
        if self.flow.bits:
            self.held += len(data)
        else:
            self.session.session.consume(self.stream_id, len(data))

    def ended(self) -> None:
        self.closed = True
        ex = self.unbind()
        if ex is not None:
            ex.upstream_done(self)

    def lost(self, code) -> None:
        """The stream closed before it ended (reset, refused, the connection gone)."""
        self.closed = True
        ex = self.unbind()
        if ex is None:
            return
        if self.refused:
            self.reused = True      # never processed: the exchange may replay it (forwarding.upstream_closed)
            self.got_bytes = False
        ex.upstream_closed(self, None if code is None else ConnectionResetError(f"HTTP/2 stream reset ({code})"))


class Http2Session(SessionOwner):   # an asyncio protocol by its methods; its session's owner
    """One multiplexed connection to a target."""

    def __init__(self, target):
        self.target = target
        self.loop = target.loop
        self.worker = None
        self.transport = None
        self.session = nghttp2.Session(self, False, {"initial_window_size": _WINDOW, "max_concurrent_streams": 100})
        self.output = None
        self.streams: dict[int, Http2StreamConnection] = {}
        self.closed = False
        self.used = False
        self.scheduled = False
        self.idle_since = CLOCK.now
        self.write_paused = False
        self.goaway_last = None   # the last stream id a GOAWAY said the peer will process
        self.reserved = 0         # streams handed out (stream()) and not yet sent
        self.settings_seen = target.loop.create_future()   # the peer's first SETTINGS (its stream limit)

    # capacity ---------------------------------------------------------------
    def capacity(self) -> int:
        """Streams that may still be opened on it now (those handed out but not yet sent count)."""
        if self.closed or self.goaway_last is not None or not self.session.request_allowed():
            return 0
        limit = self.session.peer_max_concurrent_streams
        if limit <= 0 or limit >= 2 ** 31 - 1:
            limit = _ASSUMED_STREAMS   # the peer set none: RFC 9113 suggests at least 100
        return limit - len(self.streams) - self.reserved

    def stream(self) -> Http2StreamConnection:
        self.reserved += 1
        return Http2StreamConnection(self.target, self)

    # asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        worker = self.worker
        if worker is not None:
            worker.reading = True
        try:
            self.session.receive(data)
        except nghttp2.Http2Error as e:
            log.warning("HTTP/2 upstream %s: %s", self.target.url, e)
            self.send_pending()
            self.abort()
        except Exception:  # noqa: BLE001 - a bug must not take the worker down
            log.exception("error while reading an HTTP/2 upstream")
            self.abort()
        else:
            self.schedule()
        finally:
            if worker is not None:
                worker.reading = False
                worker.flush_if_alone()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.lost(exc or "connection closed")
        self.target.session_lost(self)
        self.session.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.schedule()

    # writing -------------------------------------------------------------------
    def schedule(self) -> None:
        if self.scheduled or self.closed:
            return
        worker = self.worker
        if worker is None:
            self.loop.call_soon(self.send_pending)
            self.scheduled = True
            return
        if self.output is None:
            self.output = PulledOutput(self, self.transport, worker)
        self.scheduled = True
        worker.defer(self.output)

    def send_pending(self) -> None:
        self.scheduled = False
        if self.closed or self.write_paused or self.transport is None:
            return
        data = self.session.pending()
        if data:
            self.transport.write(data)

    def cancel(self, stream: Http2StreamConnection) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self.session.reset(stream.stream_id, nghttp2.CANCEL)
            self.schedule()
            self.stream_done()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def close(self) -> None:
        """Graceful: GOAWAY, then close once sent."""
        if not self.closed:
            self.session.goaway(nghttp2.NO_ERROR, graceful=False)
            self.send_pending()
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def stream_done(self) -> None:
        if not self.streams:
            self.idle_since = CLOCK.now
        self.target.stream_freed(self)

    # nghttp2's callbacks -------------------------------------------------------
    def h2_headers(self, stream_id: int, category: int, headers: list, end_stream: bool, oversize: bool,
                   method=None, path=None, authority=None) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.head_seen:
            stream.head(headers, end_stream)
            if stream.head_seen and end_stream:
                self.h2_end(stream_id)
        else:
            stream.trailers(headers)
            if end_stream:
                self.h2_end(stream_id)

    def h2_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self.session.consume(stream_id, len(data))
            return
        stream.body(data)

    def h2_end(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.ended()
            self.stream_done()

    def h2_closed(self, stream_id: int, code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if code == nghttp2.REFUSED_STREAM or (self.goaway_last is not None and stream_id > self.goaway_last):
            stream.refused = True
        stream.lost(code)
        self.stream_done()

    def h2_drained(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.exchange is not None:
            stream.exchange.upstream_writable(True)

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        self.goaway_last = last_stream_id   # no new streams here; those above it were never processed

    def h2_settings(self) -> None:
        if not self.settings_seen.done():
            self.settings_seen.set_result(None)
        self.target.stream_freed(self)   # the peer may allow more streams than assumed


class Http2TargetPool(TargetPool):
    """A target's HTTP/2 connections (see the module's doc). `open` counts connections;
    `in_flight` streams."""

    def __init__(self, url: str, weight: int, settings, loop, codec=None):
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "grpcs")
        super().__init__(url.replace("grpcs://", "https://", 1).replace("grpc://", "http://", 1), weight, settings,
                         loop, codec)
        self.url = self.name = url
        self.scheme = b"https" if secure else b"http"
        self.grpc = parts.scheme in ("grpc", "grpcs") or settings.protocol == "grpc"
        if secure:
            self.ssl = _client_ssl(settings)
            self.ssl.set_alpn_protocols(["h2"])
        else:
            self.ssl = None
        self.sessions: list[Http2Session] = []
        self.connecting = None   # the future of a connection being opened: requests meanwhile wait for it
        self.slot_waiters: list = []   # connect()s waiting for a free stream (futures)

    def _usable(self):
        best = None
        for session in self.sessions:
            if session.capacity() > 0 and (best is None or len(session.streams) < len(best.streams)):
                best = session
        return best

    def checkout(self):
        session = self._usable()
        return session.stream() if session is not None else None

    def reserve(self) -> bool:
        """Whether `connect()` can find a stream: on a connection with room, on the one being
        opened, or on a new one (max_connections allowing). False: wait (`wait`)."""
        return self.connecting is not None or self.open < self.max_connections or self._usable() is not None

    async def _open(self, done) -> None:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, session = await self.loop.create_connection(
                    lambda: Http2Session(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
                if self.ssl is not None:
                    tls = session.transport.get_extra_info("ssl_object")
                    if tls is None or tls.selected_alpn_protocol() != "h2":
                        session.abort()
                        raise ConnectionError("the target did not agree to HTTP/2 (ALPN)")
                session.send_pending()   # the preface and our SETTINGS
                # Its SETTINGS say how many streams it takes: none are opened before.
                await asyncio.shield(session.settings_seen)
        except BaseException as e:  # noqa: BLE001 - handed to every waiter
            self.open -= 1
            self.connecting = None
            if not done.done():
                done.set_exception(e)
                done.exception()   # retrieved: every joiner has its own copy of the outcome
            self.wake_waiter()
            return
        self.sessions.append(session)
        self.connecting = None
        done.set_result(session)

    async def connect(self):
        """A stream on a connection with room: one being opened (the caller reserved), a new
        one while max_connections allows, or the first to free a slot within connect_timeout."""
        deadline = self.loop.time() + self.settings.connect_timeout
        while True:
            session = self._usable()
            if session is not None:
                stream = session.stream()
                stream.reused = False
                return stream
            done = self.connecting
            if done is None and self.open < self.max_connections:
                self.open += 1
                done = self.connecting = self.loop.create_future()
                self.loop.create_task(self._open(done))
            if done is None:
                done = self.loop.create_future()
                self.slot_waiters.append(done)
            left = deadline - self.loop.time()
            if left <= 0:
                raise TimeoutError("no HTTP/2 stream free on the target in time")
            try:
                await asyncio.wait_for(asyncio.shield(done), left)
            except TimeoutError:
                raise TimeoutError("no HTTP/2 stream free on the target in time") from None

    def release(self, conn) -> None:
        """A stream ended or was never used: the connection stays in `sessions`."""
        if getattr(conn, "pending", False):
            conn.unreserve()
            conn.session.stream_done()

    def lost(self, conn) -> None:
        pass

    def stream_freed(self, session) -> None:
        """A stream slot opened on `session`: hand it to a waiter."""
        while self.slot_waiters and session.capacity() > 0:
            waiter = self.slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(session)
                return   # it takes the slot when it runs; the next one is woken by its stream's end
        while self.waiters and session.capacity() > 0:
            waiter = self.waiters.popleft()
            stream = session.stream()
            if not waiter.accept_connection(self, stream):
                stream.abort()

    def session_lost(self, session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            self.open -= 1
        self.wake_waiter()

    def wake_waiter(self) -> None:
        while self.waiters and (self.connecting is not None or self.open < self.max_connections):
            if self.waiters.popleft().accept_slot(self):
                return

    def reap(self, now: float) -> None:
        limit = now - self.settings.idle_timeout
        for session in list(self.sessions):
            if not session.streams and session.idle_since < limit:
                session.close()

    def close(self) -> None:
        for session in list(self.sessions):
            session.close()


def _check(name: str, schemes: tuple):
    def check(upstream, used: bool, path, lines, line, errors) -> None:
        if upstream.protocol != name:
            return
        if nghttp2 is None:
            error_at(errors, path, "protocol", lines, line, f"{name} is unavailable: this build has no nghttp2 "
                                                              "(install libnghttp2-dev and rebuild)")
            return
        for i, target in enumerate(upstream.targets):
            if target.url and target.url.split("://", 1)[0] not in schemes:
                error_at(errors, f"{path}.targets[{i}]", "url", lines, line,
                         f"{name} targets are {' or '.join(s + '://' for s in schemes)} URLs: {target.url!r}")
    return check


#: HTTP/2 with prior knowledge to http:// targets (installed by tollhouse.builtins).
H2C = UpstreamProtocol("h2c", (), check=_check("h2c", ("http",)), codec=HTTP2_UPSTREAM, target_pool=Http2TargetPool)
#: HTTP/2 over TLS (ALPN h2) to https:// targets.
HTTP2 = UpstreamProtocol("http2", (), check=_check("http2", ("https",)), codec=HTTP2_UPSTREAM,
                         target_pool=Http2TargetPool)
