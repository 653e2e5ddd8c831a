"""The client side: one asyncio.Protocol per connection, httptools callbacks.

Shaped after uvicorn's httptools protocol. The parser's callbacks build an
`Exchange` per request; requests are answered strictly in order
(pipelining), one at a time. Reading pauses whenever a side cannot keep up:
while the upstream's write buffer is full, while a request body waits for
an upstream connection, and while a pipelined request waits its turn.
"""
from __future__ import annotations

import logging
from collections import deque
from time import perf_counter

import httptools

from ..clock import CLOCK
from ..exchange.http1 import HTTP1, forwarded_prefix
from ..exchange.lifecycle import Exchange, new_exchange
from ..exchange.request import WAITING, find_header
from ..flow import CLIENT_FULL, PIPELINE, FlowControl, Gathered
from ..pipeline import Reply
from ..registry import installed

log = logging.getLogger("tollhouse.server")

# Request header names with a job of their own in HTTP itself (framing, forwarding, hop-by-hop);
# everything else is relayed. `_NOTED`: a header an installed kind reads (registry.NotedHeader).
_HOST, _CL, _TE, _CONNECTION, _DROP, _EXPECT, _RID, _XFF, _XFP, _XFH, _UPGRADE, _SINGLETON, _NOTED = range(13)
_HTTP_HEADERS = {
    b"host": _HOST, b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONNECTION,
    b"expect": _EXPECT, b"x-request-id": _RID, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH, b"upgrade": _UPGRADE,
    # A second copy is refused (400): a service that reads the first would see
    # another value than the gateway did.
    b"content-type": _SINGLETON, b"proxy-authorization": _SINGLETON,
    # Hop-by-hop (RFC 9110 §7.6.1) and identity headers only the gateway may set (docs/contract.md §3).
    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP, b"trailer": _DROP,
    b"x-consumer-id": _DROP, b"x-consumer-tier": _DROP, b"x-auth-scopes": _DROP, b"x-forwarded-access-token": _DROP,
}
# The parser's table: HTTP's headers and the installed kinds' (compile_header_table).
_SPECIAL = dict(_HTTP_HEADERS)
_SPECIAL_LENGTHS = frozenset(len(n) for n in _SPECIAL)
_NOTED_HEADERS: dict = {}   # lower-case name -> registry.NotedHeader
_NOTED_COUNT = 0
_COMPILED_FOR = None        # the registry.Installed the table was made from


def compile_header_table(parts) -> None:
    """Make the parser's header table from HTTP's own headers and those the installed
    kinds and sections declared (`parts`: registry.Installed), once per installation."""
    global _SPECIAL, _SPECIAL_LENGTHS, _NOTED_HEADERS, _NOTED_COUNT, _COMPILED_FOR
    table = dict(_HTTP_HEADERS)
    noted = {}
    for name, header in parts.headers.items():
        key = name.encode("latin-1")
        if key in table:
            raise ValueError(f"header {name!r} is HTTP's own: a kind cannot note it")
        table[key] = _NOTED
        noted[key] = header
    _SPECIAL, _NOTED_HEADERS, _NOTED_COUNT = table, noted, len(noted)
    _SPECIAL_LENGTHS = frozenset(len(n) for n in table)
    _COMPILED_FOR = parts


def header_table() -> dict:
    """The parser's table as compiled (name -> kind), for tests and the curious."""
    return dict(_SPECIAL)


def take_header(ex, name: bytes, value: bytes) -> None:
    """A request header whose name is lower case already (HTTP/2's are), onto `ex`."""
    kind = _SPECIAL.get(name)
    if kind is not None and not take_special(ex, kind, name, name, value):
        return
    ex.headers.append(b"".join((name, b": ", value, b"\r\n")))   # one bytes made, not three


def take_special(ex, kind: int, name: bytes, lower: bytes, value: bytes) -> bool:
    """A header of HTTP's own or one a kind declared, onto `ex`: whether it is also relayed."""
    if kind == _HOST:
        ex.host = value
        ex.host_count += 1
        return False
    if kind == _NOTED:
        # Noted for the kind that reads it (no scan of the lines), and relayed unless hidden.
        header = _NOTED_HEADERS[lower]
        noted = ex.noted
        if noted is None:
            noted = ex.noted = [None] * _NOTED_COUNT
        index = header.index
        if header.singleton and noted[index] is not None:
            ex.duplicate = name
        noted[index] = value
        return header.relayed
    if kind == _SINGLETON:
        if find_header(ex.headers, lower) is not None:
            ex.duplicate = name
        return True
    if kind == _CL:
        ex.content_length = int(value)   # llhttp (nghttp2) has checked it is digits and unique
    elif kind == _TE:
        ex.te = value if ex.te is None else ex.te + b", " + value
    elif kind == _CONNECTION:
        ex.connection_tokens = value if ex.connection_tokens is None else ex.connection_tokens + b"," + value
    elif kind == _EXPECT:
        ex.expect = value
    elif kind == _RID:
        ex.request_id = value
    elif kind == _XFF:
        ex.xff = value if ex.xff is None else ex.xff + b", " + value
    elif kind == _XFP:
        ex.xfp = value
    elif kind == _XFH:
        ex.xfh = value
    elif kind == _UPGRADE:
        ex.upgrade = True
    return False


#: The client connection preface (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _HeadTooLarge(Exception):
    pass


def _internal_error() -> Reply:
    return Reply.problem(500, "Internal Server Error", "the gateway failed to handle this request")


def _too_large(limits) -> Reply:
    return Reply.problem(431, "Request Header Fields Too Large",
                         f"at most {limits.max_headers} header fields and {limits.max_header_bytes} bytes")


class ClientConnection:   # an asyncio protocol by its methods (a compiled class cannot subclass asyncio.Protocol)
    """asyncio.Protocol for one client connection."""

    __slots__ = ("worker", "transport", "parser", "peer_ip", "peer_ip_bytes", "peer_trusted", "scheme", "active",
                 "pending", "incoming", "flow", "closing", "in_head", "head_started", "last_active",
                 "write_paused", "fatal", "limits", "outgoing", "head_bytes", "read_size", "forwarded",
                 "successor", "fresh", "early")

    background = False   # a client: counted and logged (see tollhouse.exchange.subrequest)
    codec = HTTP1        # how its responses are framed (exchange/codec.py)

    def __init__(self, worker, scheme: bytes):
        self.worker = worker
        self.scheme = scheme
        self.transport = None
        self.parser = None
        self.peer_ip = ""
        self.peer_ip_bytes = b""
        self.peer_trusted = False
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.incoming: Exchange | None = None
        self.flow: FlowControl | None = None   # why reading is paused (from connection_made)
        self.closing = False
        self.in_head = False
        self.head_started = 0.0
        self.last_active = 0.0
        self.write_paused = False
        self.fatal = None
        self.limits = None
        self.outgoing: Gathered | None = None   # writes of this loop iteration (from connection_made)
        self.head_bytes = 0
        self.read_size = 0
        self.forwarded = b""
        self.successor = None   # the protocol that took the connection over after an upgrade
        self.fresh = True       # nothing read yet: the first bytes may be HTTP/2's preface
        self.early = b""        # the first bytes while they may still be a preface

    # asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        worker = self.worker
        self.outgoing = Gathered(transport, worker)
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.peer_ip_bytes = self.peer_ip.encode()
        self.forwarded = forwarded_prefix(self.peer_ip_bytes, self.scheme)
        self.peer_trusted = worker.state.is_trusted(self.peer_ip)
        self.parser = httptools.HttpRequestParser(self)
        parts = installed()
        if parts is not _COMPILED_FOR:
            compile_header_table(parts)
        self.last_active = CLOCK.now
        worker.connections.add(self)
        worker.stats.active_connections += 1
        if len(worker.connections) > worker.state.limits.max_connections or worker.draining:
            self.abort()
        elif worker.http2 is not None and self.scheme == b"https":
            tls = transport.get_extra_info("ssl_object")
            if tls is not None and tls.selected_alpn_protocol() == "h2":
                self.fresh = False
                self.take_over(worker.http2(worker, self))   # ALPN chose HTTP/2

    def connection_lost(self, exc):
        worker = self.worker
        if self in worker.connections:
            worker.connections.discard(self)
            worker.stats.active_connections -= 1
        self.closing = self.flow.closed = True
        active = self.active
        if active is not None:
            active.client_gone()
        for ex in self.pending:
            ex.finished = True
        self.pending.clear()

    def data_received(self, data):
        if self.closing:
            return
        worker = self.worker
        worker.reading = True
        try:
            self.received(data)
        finally:
            worker.reading = False
            worker.flush_if_alone()

    def received(self, data):
        if self.fresh:
            if (self.worker.http2 is not None and data[:1] == b"P") or self.early:
                data = self.http2_preface(data)
                if data is None:
                    return
            self.fresh = False
        self.read_size = len(data)
        if self.in_head:
            self.head_bytes += self.read_size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            successor = self.successor
            if successor is not None:
                # The connection was taken over (an upgrade): what followed the head is its.
                if offset < len(data):
                    successor.data_received(data[offset:])
                return
            # Not taken over: the Upgrade is not honoured (the header is hop-by-hop
            # and dropped), so parsing goes on after it.
            self.parser = httptools.HttpRequestParser(self)
            if offset < len(data) and not self.closing:
                self.received(data[offset:])
        except (httptools.HttpParserError, _HeadTooLarge) as e:
            # httptools re-raises a callback's exception as HttpParserCallbackError,
            # the original as its __context__: ours (a limit) or a bug, never the client's framing.
            cause = e.__context__
            if self.fatal is not None:
                self._fail(self.fatal)
            elif cause is not None and not isinstance(cause, _HeadTooLarge):
                log.error("error while handling a request", exc_info=cause)
                self._fail(_internal_error())
                return
            else:
                self._fail(Reply.problem(400, "Bad Request", f"malformed request: {e}"))
        except Exception:  # noqa: BLE001 - a bug must not take the worker down
            log.exception("error while handling a request")
            self._fail(_internal_error())
            return
        # A head still incomplete after this many bytes is too large: counted
        # per read rather than per header (on_headers_complete checks exactly).
        if self.in_head and not self.closing:
            limits = self.limits
            if self.head_bytes > limits.max_header_bytes + limits.max_uri_bytes:
                self._fail(_too_large(limits))

    def http2_preface(self, data: bytes):
        """The first bytes of a cleartext connection: HTTP/2's preface (prior knowledge,
        RFC 9113 §3.3) hands the socket over and returns None; the start of one is kept
        until it is whole; anything else is returned to be parsed as HTTP/1.1."""
        start = self.early + data
        if start[:len(PREFACE)] == PREFACE[:len(start)]:
            if len(start) < len(PREFACE):
                self.early = start
                return None
            self.fresh = False
            self.early = b""
            successor = self.worker.http2(self.worker, self)
            self.take_over(successor)
            successor.data_received(start)
            return None
        self.early = b""
        return start

    def eof_received(self):
        # A half-closed client still gets its in-flight answer (then we close).
        if self.active is None and not self.pending:
            return False
        return True

    def pause_writing(self):
        self.write_paused = True
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.flow.pause(CLIENT_FULL)

    def resume_writing(self):
        self.write_paused = False
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.flow.resume(CLIENT_FULL)

    # writing -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Write to the client: gathered until this loop iteration's callbacks
        are done, then sent in one write (`Gathered`, `WorkerCore.defer`)."""
        self.outgoing.write(data)

    # httptools callbacks -----------------------------------------------------
    def on_message_begin(self):
        ex = new_exchange(self, self.worker.state)
        self.incoming = ex
        self.in_head = True
        # An upper bound of this head's size so far: the whole read it starts in.
        self.head_bytes = self.read_size
        self.head_started = CLOCK.now
        self.limits = ex.state.limits

    def on_url(self, url):
        ex = self.incoming
        ex.raw_target += url
        if len(ex.raw_target) > self.limits.max_uri_bytes:
            self.fatal = Reply.problem(414, "URI Too Long", f"the request target exceeds {self.limits.max_uri_bytes} bytes")
            raise _HeadTooLarge

    def on_header(self, name, value):
        ex = self.incoming
        # Only names as long as a special one can be special: most headers
        # skip the lower() and the lookup (and sizes are checked per read).
        if len(name) in _SPECIAL_LENGTHS:
            lower = name.lower()
            kind = _SPECIAL.get(lower)
            if kind is not None and not take_special(ex, kind, name, lower, value):
                return
        ex.headers.append(b"".join((name, b": ", value, b"\r\n")))   # one bytes made, not three

    def on_headers_complete(self):
        ex = self.incoming
        parser = self.parser
        self.in_head = False
        limits = self.limits
        if len(ex.headers) > limits.max_headers or (
                self.head_bytes > limits.max_header_bytes and sum(map(len, ex.headers)) > limits.max_header_bytes):
            # head_bytes bounds the head from above (it may count body or pipelined
            # bytes of the same reads), so the exact sum is only taken past it.
            self.fatal = _too_large(limits)
            raise _HeadTooLarge
        ex.method = parser.get_method()
        ex.version = parser.get_http_version()
        ex.keep_alive = parser.should_keep_alive() and not self.worker.draining
        ex.started = perf_counter()
        if ex.expect is not None and ex.expect.lower() != b"100-continue":
            ex.error = Reply.problem(417, "Expectation Failed", "only Expect: 100-continue is supported")
        else:
            codec = HTTP1
            codec.finalise_head(ex, self.limits)
        if ex.error is not None and not ex.keep_alive:
            # A request we refuse outright: nothing after it on this connection is read.
            self.closing_after(ex)
        if ex.content_length is None and not ex.chunked:
            ex.body_done = True
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.pending.append(ex)
            self.flow.pause(PIPELINE)

    def on_body(self, body):
        self.incoming.feed_body(body)

    def on_message_complete(self):
        ex = self.incoming
        if not ex.body_done:
            ex.body_complete()

    # exchanges ---------------------------------------------------------------
    def closing_after(self, ex):
        """Stop parsing: `ex` is the last request this connection will answer."""
        ex.keep_alive = False
        self.flow.pause(PIPELINE)

    def exchange_finished(self, ex):
        if self.active is not ex:
            return
        self.active = None
        if self.closing:
            return
        if not ex.keep_alive:
            self.close()
            return
        self.last_active = CLOCK.now
        if self.pending:
            nxt = self.pending.popleft()
            self.active = nxt
            if not self.pending:
                self.flow.resume(PIPELINE)
            nxt.start()
        else:
            if self.flow.reasons:
                self.flow.resume(PIPELINE)
            if self.worker.draining:
                self.close()

    def _fail(self, reply: Reply):
        """A request that cannot be parsed: answer it in turn, then close."""
        self.in_head = False
        self.flow.pause(PIPELINE)   # nothing more is read from this connection
        ex = self.incoming
        if ex is not None and not ex.finished and (ex is self.active or ex in self.pending):
            # The failure is in the body of a request already under way.
            ex.keep_alive = False
            if ex is not self.active:
                ex.error = reply
                ex.body_done = True
            elif ex.response != WAITING:
                self.abort()
            else:
                ex.body_done = True
                ex.answer(reply)
            return
        if ex is None or ex.finished:
            ex = new_exchange(self, self.worker.state)
        ex.error = reply
        ex.keep_alive = False
        ex.body_done = True
        ex.method = ex.method or b"GET"
        ex.request_id = self.worker.next_request_id()
        if not ex.path:
            ex.path = ex.raw_target.split(b"?", 1)[0]   # as sent, for the log line
        ex.started = perf_counter()
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.pending.append(ex)

    def take_over(self, protocol) -> None:
        """Hand the socket to `protocol` (an asyncio protocol) after an upgrade's 101 was
        written: no more HTTP is parsed, written or timed out here, and bytes already
        read past the request head go to the new protocol."""
        self.outgoing.flush()   # the 101 leaves first
        self.closing = True     # this connection's HTTP life is over (no close: the socket lives on)
        self.successor = protocol
        worker = self.worker
        if self in worker.connections:
            worker.connections.discard(self)
            worker.stats.active_connections -= 1
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)

    def close(self):
        """Close after what is written (gathered bytes included) has gone out."""
        self.outgoing.flush()
        self.closing = self.flow.closed = True
        self.transport.close()

    def abort(self):
        """End the connection at once (a response that cannot be completed)."""
        self.closing = self.flow.closed = True
        self.transport.abort()

    def check_timeouts(self, now: float, limits) -> None:
        """Called by the worker's sweeper (docs/contract.md §2 limits)."""
        if self.closing:
            return
        if self.in_head and now - self.head_started > limits.header_timeout:
            if self.active is None:
                self.fatal = Reply.problem(408, "Request Timeout", "the request head did not arrive in time")
                self._fail(self.fatal)
            else:
                self.abort()
        elif self.active is None and not self.in_head and now - self.last_active > limits.idle_timeout:
            self.close()
        elif self.active is not None and (self.active.body_waiter is not None or self.active.local is not None) \
                and not self.active.body_done and now - self.active.body_progress > limits.header_timeout:
            # A body buffered for validation or a terminal policy that stopped arriving: no
            # upstream read timeout watches it, so the head's timeout does (slow-body attacks).
            self.active.keep_alive = False
            self.active.answer(Reply.problem(408, "Request Timeout", "the request body stalled"))

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the current response."""
        if self.active is None and not self.in_head and not self.closing:
            self.close()
