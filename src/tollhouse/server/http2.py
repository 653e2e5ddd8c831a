"""The client side over HTTP/2: one connection, many streams, each an exchange.

A client connection becomes HTTP/2 when its first bytes are the client
preface (cleartext, prior knowledge) or when TLS's ALPN picked `h2`
(server/protocol.py hands the socket over). Frames, HPACK, flow-control
windows and RFC 9113 §8's message rules are nghttp2's (exchange/nghttp2.pyx);
here each stream's header block becomes an `Exchange` that goes through
routing and the route's whole chain as an HTTP/1.1 request does, with an
`Http2Stream` standing in for its client connection and the HTTP/2 codec
(exchange/http2.py) framing its response. See docs/http2.md.
"""
from __future__ import annotations

import logging
from time import perf_counter

from ..clock import CLOCK
from ..config.schema import Bool, Field, Int, Schema, Size
from ..exchange.http1 import forwarded_prefix
from ..exchange.http2 import HTTP2, finalise_head
from ..exchange.lifecycle import new_exchange
from ..exchange.request import COMPLETE
from ..flow import CLIENT_FULL, PulledOutput
from ..pipeline import Reply
from ..registry import Section
from .protocol import take_header

try:
    from ..exchange import nghttp2
    from ..exchange.nghttp2 import SessionOwner
except ImportError:   # built without libnghttp2's headers: HTTP/1.1 only
    nghttp2 = None
    # (Never so in the compiled build, where the name is the binding's C type and cannot be assigned.)
    globals()["SessionOwner"] = object

log = logging.getLogger("tollhouse.http2")

#: Whether this build has HTTP/2 (the nghttp2 binding was compiled).
AVAILABLE = nghttp2 is not None


class Http2Settings(Schema):
    enabled = Field(Bool(), True, "serve HTTP/2: prior knowledge on cleartext listeners, ALPN h2 with TLS")
    max_concurrent_streams = Field(Int(min=1, max=2 ** 31 - 1), 128, "streams a client may have open at once "
                                   "(SETTINGS_MAX_CONCURRENT_STREAMS)")
    initial_window_size = Field(Size(min=1, max=2 ** 31 - 1), 64 * 1024, "each stream's receive window "
                                "(SETTINGS_INITIAL_WINDOW_SIZE): the request body in flight before the gateway reads it")
    max_header_list_size = Field(Size(), 0, "largest header list (SETTINGS_MAX_HEADER_LIST_SIZE; 431 beyond); "
                                 "0 = limits.max_header_bytes")
    max_resets_per_second = Field(Int(min=1), 100, "RST_STREAMs a client may send per second; past it the "
                                  "connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487)")


def _check(config, errors) -> None:
    from ..config.schema import ConfigError

    if config.http2 is not None and config.http2.enabled and not AVAILABLE:
        errors.append(ConfigError("http2", None, "http2 is unavailable: this build has no nghttp2 (install "
                                  "libnghttp2-dev and rebuild); set http2.enabled: false to serve HTTP/1.1 only"))


#: The top-level `http2:` section (installed by tollhouse.builtins).
SECTION = Section("http2", Field(Http2Settings, None, "HTTP/2 towards clients: {enabled, max_concurrent_streams, "
                                 "initial_window_size, max_header_list_size, max_resets_per_second}; see docs/http2.md"),
                  check=_check)


def settings_of(config) -> Http2Settings | None:
    """The HTTP/2 settings in force, or None when HTTP/2 is off or unavailable."""
    settings = config.http2 if config.http2 is not None else Http2Settings()
    return settings if settings.enabled and AVAILABLE else None


_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float:
    """grpc-timeout (gRPC over HTTP/2: at most 8 digits and a unit) in seconds; 0 if malformed."""
    unit = _GRPC_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return 0.0
    return max(int(digits) * unit, 1e-3)


class Http2Stream:
    """Stands in for the client connection of one stream's exchange: what the exchange
    asks of its connection (peer, scheme, flow, abort, exchange_finished) answered for
    this stream alone. It is its own `flow` (flow.FlowControl's pause and resume by named
    reasons): while paused, the body bytes it received are not given back to the client's
    window, so the client sends at most one window more."""

    __slots__ = ("connection", "session", "stream_id", "worker", "exchange", "peer_ip", "peer_ip_bytes",
                 "peer_trusted", "scheme", "forwarded", "held", "source_paused", "reasons", "closed")

    background = False
    codec = HTTP2

    def setup(self, connection, stream_id: int) -> None:
        """In place of __init__: begin_stream makes a stream with __new__ and calls this in C."""
        self.connection = connection
        self.session = connection.session
        self.stream_id = stream_id
        self.worker = connection.worker
        self.exchange = None
        self.reasons = 0
        self.closed = False
        self.peer_ip = connection.peer_ip
        self.peer_ip_bytes = connection.peer_ip_bytes
        self.peer_trusted = connection.peer_trusted
        self.scheme = connection.scheme
        self.forwarded = connection.forwarded
        self.held = 0               # body bytes received while paused, not yet given back to the window
        self.source_paused = False  # the response body's source (an upstream) is paused: the queue is full

    # flow ------------------------------------------------------------------------
    @property
    def flow(self):
        return self   # a property, not a field: a stream referring to itself would be a cycle for the collector

    def pause(self, reason: int) -> None:
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons:
                self.consume_held()

    # what the codec calls ------------------------------------------------------
    def respond(self, status: int, lines: list, request_id: bytes, body: bytes, has_body: bool) -> None:
        """A response head with `body` (a whole answer), or with a body to follow (`has_body`)."""
        self.session.respond(self.stream_id, status, lines, request_id, body, has_body)
        self.connection.schedule()

    def interim(self, status: int) -> None:
        self.session.interim(self.stream_id, status)
        self.connection.schedule()

    def send(self, chunk: bytes) -> None:
        if self.session.send_data(self.stream_id, chunk):
            # More is queued than the client's window takes: pause the source until it drains.
            up = self.exchange.upstream if self.exchange is not None else None
            if up is not None:
                self.source_paused = True
                up.flow.pause(CLIENT_FULL)
        self.connection.schedule()

    def end(self, trailers) -> None:
        self.session.end_data(self.stream_id, trailers)
        self.connection.schedule()

    def drained(self) -> None:
        if self.source_paused:
            self.source_paused = False
            up = self.exchange.upstream if self.exchange is not None else None
            if up is not None:
                up.flow.resume(CLIENT_FULL)

    # what the exchange calls ---------------------------------------------------
    def write(self, data: bytes) -> None:
        raise RuntimeError("an HTTP/2 stream is written through its codec")   # never HTTP/1.1 bytes

    def abort(self) -> None:
        """The response cannot be completed: this stream ends (RST_STREAM), not its neighbours."""
        self.closed = True
        self.connection.reset(self, nghttp2.INTERNAL_ERROR)

    def closing_after(self, ex) -> None:
        """HTTP/1.1 stops reading the connection after a refused request; a stream ends alone."""

    def take_over(self, protocol) -> None:
        raise RuntimeError("an HTTP/2 stream cannot be upgraded")

    def exchange_finished(self, ex) -> None:
        if ex.response != COMPLETE:
            self.abort()
        elif not ex.body_done and not self.session.remote_closed(self.stream_id):
            # Answered before the request body ended: stop it (RFC 9113 §8.1, NO_ERROR).
            self.session.reset_when_ended(self.stream_id)
            self.connection.schedule()
        self.connection.stream_finished(self)

    def consume_held(self) -> None:
        if self.held:
            self.session.consume(self.stream_id, self.held)
            self.held = 0
            self.connection.schedule()


class Http2Connection(SessionOwner):   # an asyncio protocol by its methods
    """One HTTP/2 client connection (see the module's doc); its session calls it back
    (SessionOwner: in C, where both are compiled)."""

    __slots__ = ("worker", "scheme", "peer_ip", "peer_ip_bytes", "peer_trusted", "forwarded", "settings", "transport",
                 "session", "output", "streams", "scheduled", "closing", "write_paused", "last_active", "stalled_since")

    background = False

    def __init__(self, worker, client):
        """`client`: the HTTP/1 connection whose socket this takes over (its peer, scheme)."""
        self.worker = worker
        self.scheme = client.scheme
        self.peer_ip = client.peer_ip
        self.peer_ip_bytes = client.peer_ip_bytes
        self.peer_trusted = client.peer_trusted
        self.forwarded = forwarded_prefix(self.peer_ip_bytes, self.scheme)
        self.settings = settings_of(worker.state.config)
        self.transport = None
        self.session = None
        self.output = None
        self.streams: dict[int, Http2Stream] = {}
        self.scheduled = False
        self.closing = False
        self.write_paused = False
        self.last_active = CLOCK.now
        self.stalled_since = 0.0     # when queued response bytes last stopped leaving (a slow reader)

    # asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        worker = self.worker
        limits = worker.state.limits
        settings = self.settings
        self.session = nghttp2.Session(self, True, {
            "max_concurrent_streams": settings.max_concurrent_streams,
            "initial_window_size": settings.initial_window_size,
            "max_header_list_size": settings.max_header_list_size or limits.max_header_bytes,
            "max_resets_per_second": settings.max_resets_per_second,
        })
        self.output = PulledOutput(self, transport, worker)   # our frames leave once per loop iteration
        worker.connections.add(self)
        worker.stats.active_connections += 1
        worker.stats.inc("http2_connections")
        self.schedule()   # our SETTINGS go first

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        worker = self.worker
        worker.reading = True
        self.last_active = CLOCK.now
        try:
            self.session.receive(data)
        except nghttp2.Http2Error as e:
            log.debug("HTTP/2 connection error from %s: %s", self.peer_ip, e)
            self.end_connection()
        except Exception:  # noqa: BLE001 - a bug must not take the worker down
            log.exception("error while handling an HTTP/2 connection")
            self.session.goaway(nghttp2.INTERNAL_ERROR, graceful=False)
            self.end_connection()
        else:
            self.count_resets()
            self.schedule()
        finally:
            worker.reading = False
            worker.flush_if_alone()

    def count_resets(self) -> None:
        """Rapid reset (CVE-2023-44487): the session sent GOAWAY ENHANCE_YOUR_CALM past
        max_resets_per_second (counted as frames are parsed, exchange/nghttp2.pyx)."""
        if self.session.calmed:
            log.warning("HTTP/2 client %s reset more than %d streams in a second: GOAWAY ENHANCE_YOUR_CALM",
                        self.peer_ip, self.settings.max_resets_per_second)
            self.worker.stats.inc("http2_calm_goaways")
            self.end_connection()

    def eof_received(self):
        return False   # the client is done: close (open streams are abandoned)

    def connection_lost(self, exc) -> None:
        worker = self.worker
        if self in worker.connections:
            worker.connections.discard(self)
            worker.stats.active_connections -= 1
        self.closing = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.closed = True
            if stream.exchange is not None:
                stream.exchange.client_gone()
        if self.session is not None:
            self.session.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.schedule()

    # writing -----------------------------------------------------------------
    def schedule(self) -> None:
        """Bytes to send: they leave when this loop iteration's callbacks are done."""
        if not self.scheduled and not self.closing:
            self.scheduled = True
            self.worker.defer(self.output)

    def send_pending(self) -> None:
        self.scheduled = False
        if self.closing or self.write_paused:
            return   # resume_writing schedules again; meanwhile streams' queues fill and pause their sources
        data = self.session.pending()
        if data:
            self.transport.write(data)
            self.stalled_since = 0.0
        if not self.session.wants():
            self.close()

    def reset(self, stream: Http2Stream, code: int) -> None:
        self.session.reset(stream.stream_id, code)
        self.schedule()

    def end_connection(self) -> None:
        """A connection error: what nghttp2 queued (its GOAWAY) leaves, then the socket closes."""
        self.scheduled = False
        if not self.closing and not self.transport.is_closing():
            data = self.session.pending()
            if data:
                self.transport.write(data)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

    # nghttp2's callbacks (exchange/nghttp2.pyx) -----------------------------------
    def h2_headers(self, stream_id: int, category: int, headers: list, end_stream: bool, oversize: bool,
                   method, path, authority) -> None:
        if category == nghttp2.REQUEST:
            self.begin_stream(stream_id, headers, end_stream, oversize, method, path, authority)
            return
        stream = self.streams.get(stream_id)
        if stream is None or stream.exchange is None:
            return
        # Request trailers: sent upstream after the body (a chunked trailer to HTTP/1.1).
        stream.exchange.request_trailers = _trailer_lines(headers)
        if end_stream:
            self.h2_end(stream_id)

    def begin_stream(self, stream_id: int, headers: list, end_stream: bool, oversize: bool, method, path,
                     authority) -> None:
        worker = self.worker
        stream = Http2Stream.__new__(Http2Stream)   # (made in C: no call through the type)
        stream.setup(self, stream_id)
        self.streams[stream_id] = stream
        ex = new_exchange(stream, worker.state)
        stream.exchange = ex
        ex.version = "2"
        ex.started = perf_counter()
        limits = worker.state.limits
        ex.method = method or b""
        ex.raw_target = path or b""
        cookies = None
        for name, value in headers:
            if name[0] == 58:   # b":" - :scheme (and :protocol): nothing to keep
                continue
            if name == b"cookie":
                # RFC 9113 §8.2.3: crumbs are joined for an HTTP/1.1 hop.
                cookies = value if cookies is None else cookies + b"; " + value
            else:
                if name == b"grpc-timeout":
                    ex.time_limit = grpc_timeout(value)   # the call's deadline (relayed too)
                take_header(ex, name, value)
        if cookies is not None:
            take_header(ex, b"cookie", cookies)   # noted where a kind reads it (a session cookie)
        ex.error = finalise_head(ex, authority, limits, len(headers), oversize)
        if end_stream:
            ex.body_done = True
        elif ex.content_length is None:
            ex.chunked = True   # length unknown until END_STREAM: chunked towards an HTTP/1.1 upstream
        ex.start()

    def h2_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        ex = stream.exchange
        if ex is not None and not ex.finished:
            ex.feed_body(data)
        if stream.reasons:
            stream.held += len(data)
        else:
            self.session.consume(stream_id, len(data))

    def h2_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        ex = stream.exchange
        if ex is not None and not ex.body_done:
            ex.body_complete()

    def h2_closed(self, stream_id: int, code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream.closed = True
        ex = stream.exchange
        if ex is not None and not ex.finished:
            ex.client_gone()   # the client reset the stream (or the connection ended)

    def h2_drained(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.drained()

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        pass   # a client's GOAWAY: it opens no more streams; those open finish

    def h2_settings(self) -> None:
        pass

    # streams -------------------------------------------------------------------
    def stream_finished(self, stream: Http2Stream) -> None:
        self.last_active = CLOCK.now
        stream.exchange = None if stream.exchange is not None and stream.exchange.finished else stream.exchange
        if self.worker.draining and not self.open_exchanges():
            self.schedule()

    def open_exchanges(self) -> int:
        return _open_exchanges(self.streams)

    def check_timeouts(self, now: float, limits) -> None:
        """Called by the worker's sweeper: idle connections, slow readers, stalled bodies."""
        if self.closing:
            return
        if not self.streams:
            if now - self.last_active > limits.idle_timeout:
                self.session.goaway(nghttp2.NO_ERROR, graceful=False)
                self.end_connection()
            return
        if self.write_paused or _any_queued(self.session, self.streams):
            # Response bytes wait on the client: a reader that takes none for idle_timeout is cut.
            if not self.stalled_since:
                self.stalled_since = now
            elif now - self.stalled_since > limits.idle_timeout:
                log.info("HTTP/2 client %s took no response bytes for %.0fs: connection dropped", self.peer_ip,
                         limits.idle_timeout)
                self.abort()   # a reader that stopped: what is queued for it would never leave
                return
        for stream in list(self.streams.values()):
            ex = stream.exchange
            if ex is not None and not ex.finished and (ex.body_waiter is not None or ex.local is not None) \
                    and not ex.body_done and now - ex.body_progress > limits.header_timeout:
                ex.answer(Reply.problem(408, "Request Timeout", "the request body stalled"))

    def drain(self) -> None:
        """Shutdown: GOAWAY now (no new streams); the open ones finish, then the connection closes."""
        if self.closing:
            return
        self.session.goaway(nghttp2.NO_ERROR, graceful=True)
        self.schedule()
        if not self.open_exchanges():
            self.end_connection()


# Fields a trailer may not carry (RFC 9110 §6.5.1: framing, routing, the gateway's own).
_NOT_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host", b"te", b"trailer", b"x-request-id",
                           b"content-type", b"authorization", b"cookie", b"set-cookie"))


def _trailer_lines(headers: list) -> list:
    return [name + b": " + value + b"\r\n" for name, value in headers
            if name[:1] != b":" and name not in _NOT_TRAILERS]


# Outside the classes: the compiled build allows no closure (a generator) in their methods.
def _open_exchanges(streams: dict) -> int:
    return sum(1 for s in streams.values() if s.exchange is not None and not s.exchange.finished)


def _any_queued(session, streams: dict) -> bool:
    return any(session.queued(s) for s in streams)
