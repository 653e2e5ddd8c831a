"""Subrequests: call an upstream by name from inside the gateway, with no client connection.

    response = await subrequest(worker, "users", b"GET", b"/users/7", parent=exchange)

The call goes the way a proxied request goes: the upstream's pool (warm
connections, `max_connections` and its queue), its balancer, health and
outlier ejection, its circuit breaker, its retries within their budget, and
the timeout as the deadline for the response head. It carries the parent
request's forwarded headers and request id when a parent is given. The
answer is a `SubResponse` (status, headers, body); a failure the gateway
would have answered itself (502, 503, 504) is a SubResponse with that status
and `local` set. Subrequests are not client requests: they are not counted
in `tollhouse_requests_total` nor logged.

The cache's background refresh and response aggregation use it.
"""
from __future__ import annotations

import asyncio
from time import perf_counter

from ..flow import FlowControl
from ..pipeline import EMPTY_CHAIN
from ..routing import RouteTarget
from .codec import Codec
from .http1 import forwarded_prefix
from .lifecycle import Exchange, new_exchange
from .request import RAW, find_header

#: Methods whose request carries a body length even when empty (RFC 9110 §8.6).
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


class SubResponse:
    """A subrequest's answer. `headers` are ready-to-send lines (b"name: value\\r\\n")."""

    __slots__ = ("status", "headers", "body", "local", "elapsed")

    def __init__(self, status: int, headers: list, body: bytes, local: bool, elapsed: float = 0.0):
        self.status = status
        self.headers = headers
        self.body = body
        self.local = local   # answered by the gateway (no upstream answer: 502, 503, 504...)
        self.elapsed = elapsed   # seconds from sending to the end of the answer

    def header(self, name: str) -> str | None:
        """The first value of a response header (case-insensitive), or None."""
        return find_header(self.headers, name.lower().encode())


class KeepCodec(Codec):
    """The codec of a subrequest: frames nothing, keeps the body's bytes on the origin."""

    __slots__ = ()

    def frame_relayed(self, exchange, content_length, chunked):
        exchange.mode = RAW

    def frame_unknown_length(self, exchange):
        exchange.mode = RAW

    def write_head(self, exchange, body):
        if body:
            exchange.conn.received.append(body)

    def write_body(self, exchange, chunk):
        exchange.conn.received.append(chunk)

    def end_body(self, exchange):
        pass


KEEP = KeepCodec()


class Completion:
    """What a subrequest's end calls instead of resolving a future (start_subrequest's `then`):
    `arrived(index, SubResponse)`, with the `index` the call was started with. A caller that
    counts its answers in itself (the aggregate's fan-out) needs no future, no task and no
    object per call; the compiled build calls it in C."""

    __slots__ = ()

    def arrived(self, index: int, answer) -> None:
        raise NotImplementedError


class SubrequestOrigin:
    """Stands in for the client connection of a subrequest: nothing is written to a
    socket (its codec keeps the response); when the exchange ends, the waiting future
    gets its answer."""

    __slots__ = ("worker", "received", "peer_ip", "peer_ip_bytes", "scheme", "forwarded", "transport", "done", "then",
                 "index", "peer_trusted", "flow")

    background = True   # not a client's request: Exchange.finish counts and logs nothing
    codec = KEEP

    def __init__(self, worker, parent=None):
        self.setup(worker, parent)

    def setup(self, worker, parent) -> None:
        """__init__'s work: begin_subrequest makes an origin with __new__ and calls this
        in C (no argument parsing)."""
        self.worker = worker
        self.received = []   # the response body's pieces
        conn = parent.conn if parent is not None else None
        if conn is not None:
            self.peer_ip = conn.peer_ip
            self.peer_ip_bytes = conn.peer_ip_bytes
            self.scheme = conn.scheme
            self.forwarded = conn.forwarded   # made when the client's connection opened
        else:
            self.peer_ip, self.peer_ip_bytes, self.scheme = "127.0.0.1", b"127.0.0.1", b"http"
            self.forwarded = _LOCAL_FORWARDED
        self.peer_trusted = False
        self.transport = self
        self.flow = _NO_FLOW   # nothing to pause
        self.done = None
        self.then = None   # instead of `done`: a Completion, told `index` and the SubResponse
        self.index = 0

    def write(self, data) -> None:
        pass   # the codec keeps the response: nothing is written

    def abort(self) -> None:
        pass

    def exchange_finished(self, exchange) -> None:
        then = self.then
        if then is not None:
            self.then = None
            then.arrived(self.index, _answer(self, exchange))
            return
        done = self.done
        if done is not None and not done.done():
            done.set_result(_answer(self, exchange))


def _answer(origin, exchange):
    """The SubResponse of a subrequest that ended (made field by field: no argument parsing)."""
    answer = SubResponse.__new__(SubResponse)
    answer.status = exchange.status
    answer.headers = exchange.response_headers or []
    answer.body = b"".join(origin.received)
    answer.local = not exchange.head_received
    answer.elapsed = perf_counter() - exchange.started
    return answer


#: A subrequest's flow control: there is no client to pause (one for all of them).
_NO_FLOW = FlowControl(None)
#: The forwarded headers of a subrequest with no client behind it (the cache's refresh).
_LOCAL_FORWARDED = forwarded_prefix(b"127.0.0.1", b"http")


def start_subrequest(worker, upstream: str, method: bytes, target: bytes, *, headers=(), body: bytes = b"",
                     timeout: float | None = None, parent=None, host: bytes | None = None,
                     observe=None, span: str | None = None, step=None, then=None, index: int = 0) -> Exchange:
    """Send the subrequest now; its origin's `done` future gets the SubResponse.
    `upstream`: the name of one of the config's upstreams, or an UpstreamPool.
    `target` is the path and query the upstream receives; `headers` are ready-to-send
    lines; `host` (else the target's host:port) is sent as Host; `observe(exchange)`
    returns what watches the response as it arrives (the cache's Fill: head, body,
    complete, finished); `span` names the call in the parent's trace (its CLIENT
    spans, when the parent is traced), under `step` (a Tracer.step of the parent's)
    when given. `then`, a Completion, when given, is told `then.arrived(index, SubResponse)`
    as the call ends instead (no future: for a caller that counts its answers in itself).
    KeyError for an unknown upstream."""
    # A name of the config's upstreams, or a pool of the caller's own (a GraphQL subgraph's URL).
    pool = worker.state.pools[upstream] if upstream.__class__ is str else upstream
    return begin_subrequest(worker, pool, method, target, headers, body, timeout, parent, host, observe, span, step,
                            then, index)


def begin_subrequest(worker, pool, method, target, headers, body, timeout, parent, host, observe, span, step, then,
                     index):
    """start_subrequest's work, its options positional (compiled: typed, called in C)."""
    state = worker.state
    upstream = pool.name
    origin = SubrequestOrigin.__new__(SubrequestOrigin)
    origin.setup(worker, parent)
    if then is None:
        origin.done = worker.loop.create_future()
    else:
        origin.then = then
        origin.index = index
    ex = new_exchange(origin, state)
    # The route a subrequest goes by, made once per upstream, timeout and Host choice (per config version).
    key = (upstream, timeout, host is not None)
    routes = state.subrequest_routes
    route = routes.get(key)
    if route is None:
        route = routes[key] = RouteTarget(
            f"subrequest-{upstream}", -1, upstream=pool, chain=EMPTY_CHAIN,
            timeout=timeout if timeout is not None else pool.settings.read_timeout,
            preserve_host=host is not None, stats=worker.stats.route(f"subrequest-{upstream}", upstream))
    ex.route = route
    if 0x3F in target:   # b"?" tested as an int (memchr; a bytes needle takes a buffer): most targets have no query
        q = target.find(b"?")
        ex.path, ex.query = target[:q], target[q:]
    else:
        ex.path, ex.query = target, b""
    ex.method = method
    ex.host = host or b""
    ex.headers = list(headers)   # its own: tracing and policies add to a request's headers
    if parent is not None:
        ex.request_id = parent.request_id
        ex.xff, ex.xfp, ex.xfh = parent.xff, parent.xfp, parent.xfh
        ex.host = host or parent.host
        if span is not None and parent.tracer is not None:
            ex.tracer = (step if step is not None else parent.tracer).subrequest(span)
    else:
        ex.request_id = worker.next_request_id()
    if body or method in _BODY_METHODS:
        ex.content_length = len(body)
        ex.body_chunks = [body] if body else None
    else:
        ex.body_chunks = None
    ex.body_done = True
    ex.started = perf_counter()
    if observe is not None:
        ex.add_observer(observe(ex))
    ex.proxy()
    return ex


async def subrequest(worker, upstream: str, method: bytes, target: bytes, **options) -> SubResponse:
    """Call `upstream` and wait for its answer (see `start_subrequest` for the options)."""
    return (await subrequests([start_subrequest(worker, upstream, method, target, **options)]))[0]


async def subrequests(started: list) -> list:
    """Wait for the answers of subrequests already started (`start_subrequest`), in
    order: one wait, no task per call. When the caller is cancelled, every call
    still under way is abandoned (its upstream attempt dropped)."""
    try:
        if len(started) == 1:   # one call: its future awaited as it is (no gathering future around it)
            return [await started[0].conn.done]
        return await asyncio.gather(*(ex.conn.done for ex in started))
    except asyncio.CancelledError:
        for ex in started:
            ex.client_gone()   # the caller gave up: the upstream attempt is abandoned
        raise
