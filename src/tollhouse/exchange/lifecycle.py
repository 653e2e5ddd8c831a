"""One request and its response, from routing to the end: the lifecycle layer.

`Exchange` is what the client connection creates per request and what
policies see (its fields and policy API: exchange/request.py). It routes,
runs the route's chain, and hands over to forwarding (exchange/forwarding.py)
or to a terminal policy; framing is the connection's codec's. Nothing here creates a
task unless a policy must await or a new upstream connection must be opened.
"""
from __future__ import annotations

import logging

from ..clock import CLOCK
from ..flow import BODY_WAITING
from ..pipeline import Reply
from .forwarding import Forwarding
from .request import CHUNKED, COMPLETE, WAITING

log = logging.getLogger("tollhouse.exchange")

_BODY_BUFFER_HIGH = 64 * 1024


class Exchange(Forwarding):
    """One request/response cycle on a client connection (see tollhouse.request for its fields)."""

    __slots__ = ()

    # ------------------------------------------------------------------- start
    def start(self) -> None:
        """Route and run the chain (the connection calls this when it is this request's turn)."""
        worker = self.worker
        worker.active_requests += 1
        if worker.tracer_factory is not None:
            if worker.trace_skip > 0 and not self.noted_any(worker.trace_notes):
                worker.trace_skip -= 1   # a ratio decision made ahead: not sampled (TracingFactory.ratio_sampled)
            else:
                self.tracer = worker.tracer_factory(self)
        if self.error is not None:
            self.answer(self.error)
            return
        state = self.state
        route, params = state.table.lookup(self.host, self.path, self.method)
        if route is None:
            if params:
                allow = _allow_list(params)
                self.answer(Reply.problem(405, "Method Not Allowed", f"{self.method.decode()} is not allowed here",
                                          headers=[("allow", allow)]))
            else:
                self.answer(Reply.problem(404, "Not Found", "no route matches this request"))
            return
        self.route = route
        self.params = params
        if route.local is not None:
            if route.chain.request_hooks:   # the global ip rules guard gateway endpoints too
                route.chain.run(self, self.start_local, _bound(self, "answer"))
            else:
                self.start_local()
            return
        if self.tracer is not None and route.chain.request_hooks:
            # With the tracer's hooks around each policy.
            route.chain.run(self, _bound(self, "proxy"), _bound(self, "answer"))
            return
        # The request hooks, inline: the common all-None case creates nothing
        # on the way; anything else is the chain's to handle.
        i = 0
        for hook in route.chain.request_hooks:
            result = hook(self)
            if result is not None:
                route.chain.handle(self, result, i, _bound(self, "proxy"), _bound(self, "answer"))
                return
            i += 1
        self.proxy()

    # ------------------------------------------------------- endpoints of the gateway
    def start_local(self) -> None:
        if self.finished:
            return
        self.local = self.route.local
        if self.body_done:
            self.run_local()
        else:
            # A terminal policy gets the whole body, up to the route's body limit (feed_body);
            # one that stops arriving gets 408 (ClientConnection.check_timeouts).
            self.body_progress = CLOCK.now
            self.conn.flow.resume(BODY_WAITING)

    def run_local(self) -> None:
        """Answer from a terminal policy or a gateway endpoint (the OAuth token endpoint) with
        the whole body, up to the route's body limit."""
        body = b"".join(self.body_chunks or ())
        result = self.local(self, body)
        if result is None:
            return   # it answers later itself (an aggregation waiting for its backends)
        if isinstance(result, Reply):
            self.answer(result)
            return
        self.task = self.worker.loop.create_task(self._local_async(result))

    async def _local_async(self, pending) -> None:
        try:
            reply = await pending
        except Exception:  # noqa: BLE001 - a bug: logged, 500
            log.exception("gateway endpoint failed")
            reply = Reply.problem(500, "Internal Server Error", "the gateway failed to answer")
        self.task = None
        if reply is not None:   # None: it answered with respond()
            self.answer(reply)

    def respond(self, status: int, lines: list, body: bytes) -> None:
        """An origin-like answer made inside the gateway (an aggregated response):
        the cache's observer and the route's response policies see it as they see
        an upstream's. `lines` are header lines (b"name: value\r\n") without framing."""
        if self.finished or self.response != WAITING:
            return
        lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(self.worker.date_line)
        self.relay_head(status, lines, None, len(body), False)
        if self.finished or self.response == COMPLETE:
            return   # a policy answered instead (the cache's stale_if_error)
        self.upstream_body(body)
        if self.mode == CHUNKED or self.body_filters is not None:
            self.end_body()
        if self.observers is not None:
            self.observed_complete()
        self.response = COMPLETE
        self.finish()

    # ------------------------------------------------------- request body (client)
    def feed_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        self.body_received += len(chunk)
        max_body = self.state.limits.max_body_bytes
        if self.body_limit and (not max_body or self.body_limit < max_body):
            max_body = self.body_limit
        if max_body and self.body_received > max_body:
            self.refuse_body(Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes"))
            return
        if self.response == COMPLETE:
            return
        if self.body_readers is not None:
            refusal = read_body(self.body_readers, self, chunk)
            if refusal is not None:
                self.refuse_body(refusal)
                return
        if self.upstream is not None:
            self.forward_body(chunk)
        elif self.body_chunks is not None:
            self.body_chunks.append(chunk)
            self.body_progress = CLOCK.now
            self.body_buffered += len(chunk)
            if self.body_buffered > _BODY_BUFFER_HIGH and self.body_waiter is None and self.local is None:
                self.conn.flow.pause(BODY_WAITING)   # until an upstream connection takes it

    def refuse_body(self, reply: Reply) -> None:
        """The request body is refused part-way (too large, or by a body reader): answer
        with `reply` if nothing was sent yet, else cut the connection."""
        self.keep_alive = False
        self.abort_upstream()
        if self.response != WAITING:
            self.conn.abort()
        else:
            self.answer(reply)

    def body_complete(self) -> None:
        self.body_done = True
        if self.finished:
            return
        if self.body_readers is not None and self.response != COMPLETE:
            refusal = body_read(self.body_readers, self)
            if refusal is not None:
                self.refuse_body(refusal)
                return
        if self.local is not None and self.task is None and self.response != COMPLETE:
            self.run_local()
            return
        waiter = self.body_waiter
        if waiter is not None:
            self.body_waiter = None
            waiter()
            return
        if self.upstream is not None:
            self.forward_body_end()
        if self.response == COMPLETE:
            self.finish()

    def take_over(self, protocol) -> None:
        """After an upgrade: the 101 head has been written; the client connection now
        belongs to `protocol` (a WebSocket relay). The exchange stays open until the
        protocol calls `finish()` when the session ends, so it is counted and logged
        (status 101) once, with the session's duration."""
        self.keep_alive = False
        self.response = COMPLETE
        self.conn.take_over(protocol)

    def client_gone(self) -> None:
        """The client connection closed: stop everything, count it as 499."""
        if self.finished:
            return
        if self.task is not None:
            self.task.cancel()
        self.abort_upstream()
        if self.response != COMPLETE:
            self.status = 499  # nginx's "client closed request"
        self.finish()


def new_exchange(conn, state) -> Exchange:
    """Exchange(conn, state), made in C where compiled: no call through the type, no argument
    parsing. Every request makes one, and an aggregate one per backend."""
    ex = Exchange.__new__(Exchange)
    ex.setup(conn, state)
    return ex


def _bound(exchange, name: str):
    """`exchange.<name>` as a bound method, looked up as Python does. Compiled, `self.answer`
    of a method inherited from a cimported layer would become a C function wrapped with
    the wrong signature (Cython drops the method's skip-dispatch argument: GCC warns of
    incompatible pointer types, and newer GCCs refuse to compile it)."""
    return getattr(exchange, name)


def read_body(readers, exchange, chunk: bytes):
    """A piece of the request body through each reader: the first Reply one answers, or None."""
    for reader in readers:
        refusal = reader.feed(exchange, chunk)
        if refusal is not None:
            return refusal
    return None


def body_read(readers, exchange):
    """The request body is complete: the first Reply a reader answers, or None."""
    for reader in readers:
        refusal = reader.end(exchange)
        if refusal is not None:
            return refusal
    return None


def _allow_list(methods) -> str:
    return ", ".join(sorted(m.decode() for m in methods))
