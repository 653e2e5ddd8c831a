"""Forwarding: the last step of a request's chain, as Envoy's router filter is.

Choose the target (balancer, health, ejection), take a connection from the
target's pool (or wait for one), send the request, relay the response,
retry within the budget, enforce the deadlines. The upstream connection
feeds the exchange through `upstream_head`, `upstream_body`,
`upstream_done`, `upstream_closed` and `upstream_failed`; the pool hands a
waiter a connection (`accept_connection`) or a reserved slot (`accept_slot`).
"""
from __future__ import annotations

from time import perf_counter

from ..clock import CLOCK
from ..flow import BODY_WAITING, UPSTREAM_FULL
from ..pipeline import Reply
from .relay import Relay
from .request import CHUNKED, COMPLETE, WAITING

_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class Forwarding(Relay):
    """Forwarding of an exchange to its route's upstream."""

    __slots__ = ()

    def proxy(self) -> None:
        if self.finished or self.response != WAITING:
            return   # over, or answered by a policy itself (a connection taken over after an upgrade)
        pool = self.pool = self.route.choose_pool(self)
        limiter = pool.concurrency
        if limiter is not None and self.admitted == 0.0:
            verdict = limiter.admit(self)   # now, later (proxy() is called again), or shed
            if verdict is not True:
                if verdict is not False:
                    self.answer(verdict)
                return
        target = pool.single
        if target is None or not target.healthy or target.ejected_until > CLOCK.now or pool.breaker is not None:
            chosen = choose_target(pool, self)
            if chosen.__class__ is Reply:
                self.answer(chosen)
                return
            target = chosen
        pool.request_started()
        self.attempt = 1
        self.first_started = CLOCK.now
        self.use_target(target)

    def use_target(self, target) -> None:
        self.target = target
        if self.tracer is not None:
            self.tracer.attempt_started(self, target, self.attempt)
        conn = target.checkout()
        if conn is not None:
            self.send_upstream(conn)
        elif target.reserve():
            self.connect(target)
        else:
            # max_connections reached: wait (FIFO) up to connect_timeout, then 503.
            target.wait(self)
            self.timer = self.worker.loop.call_later(target.settings.connect_timeout, self.wait_expired)

    def connect(self, target) -> None:
        task = self.worker.loop.create_task(target.connect())
        task.add_done_callback(self.connected)
        self.task = task

    def connected(self, task) -> None:
        self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            conn = task.result()
            if self.finished:
                self.target.release(conn)
            else:
                self.send_upstream(conn)
            return
        if self.finished:
            return
        if isinstance(exc, TimeoutError):
            reply = Reply.problem(504, "Gateway Timeout", "connecting to the upstream timed out")
        else:
            reply = Reply.problem(502, "Bad Gateway", f"cannot connect to the upstream: {_reason(exc)}")
        self.failed_attempt("connect_error", reply.status, reply, any_method=True)

    def accept_connection(self, target, conn) -> bool:
        """A waiter is handed a released connection."""
        if self.finished:
            return False
        self._cancel_timer()
        self.send_upstream(conn)
        return True

    def accept_slot(self, target) -> bool:
        """A waiter may open a connection (one closed; the pool has reserved its slot)."""
        if self.finished:
            return False
        self._cancel_timer()
        self.connect(target)
        return True

    def wait_expired(self) -> None:
        self.timer = None
        if self.finished:
            return
        self.target.leave(self)
        if self.tracer is not None:
            self.tracer.attempt_ended(self, self.target, 503, "pool_full")
        self.answer(Reply.problem(503, "Service Unavailable", "the upstream's connection limit is reached",
                                  headers=[("retry-after", "1")]))

    def send_upstream(self, conn) -> None:
        route = self.route
        self.upstream = conn
        codec = conn.codec
        path = self.path if route.path_kept else route.upstream_path(self.path, self.params)
        parts = codec.request_head(self, self.target, self.method, path)
        chunks = self.body_chunks
        if chunks:
            self.sent_body = True
        codec.frame_body(self, parts, chunks)
        self.body_chunks = None
        if self.body_buffered:
            self.body_buffered = 0
            self.conn.flow.resume(BODY_WAITING)
        self.upstream_started = CLOCK.now
        self.upstream_clock = perf_counter()
        conn.send(self, parts, self.method == b"HEAD")
        if self.expect and not self.body_done and not self.continue_sent and not self.body_received:
            self.continue_sent = True
            client_codec = self.codec
            client_codec.write_continue(self)
        # Timeouts are checked by the worker's deadline sweep, not a timer
        # per request (a uvloop timer costs more than the rest of this method).
        self.deadline = self.upstream_started + route.first_wait
        if self.time_limit:
            self.deadline = min(self.deadline, self.first_started + self.time_limit)
        self.worker.inflight.add(self)

    def forward_body(self, chunk: bytes) -> None:
        """A piece of the request body, for the upstream connection in use."""
        up = self.upstream
        self.sent_body = True
        up.last_read = CLOCK.now  # upload progress counts as activity for read_timeout
        codec = up.codec
        codec.write_body(self, up.outgoing, chunk)

    def forward_body_end(self) -> None:
        """The request body is complete."""
        up = self.upstream
        # Like Envoy's route timeout, the wait for the answer starts when the request is complete.
        self.upstream_started = up.last_read = CLOCK.now
        codec = up.codec
        codec.end_body(self, up.outgoing)

    # ----------------------------------------------------------- upstream side
    def upstream_writable(self, writable: bool) -> None:
        # The upstream cannot take more of the request body: read no more from the client.
        if writable:
            self.conn.flow.resume(UPSTREAM_FULL)
        else:
            self.conn.flow.pause(UPSTREAM_FULL)

    def upstream_head(self, conn, status: int, headers: list, keep_alive: bool) -> None:
        """`headers` arrive filtered by the upstream connection (hop-by-hop and framing removed)."""
        if self.finished:
            return
        self.head_received = True
        self.upstream_keepalive = keep_alive
        self.upstream_time = perf_counter() - self.upstream_clock
        route = self.route
        self.pool.attempt_ended(self.target, status < 500)
        if self.tracer is not None:
            self.tracer.attempt_ended(self, self.target, status, None)
        if status >= 500 and self.may_retry("status", status, False):
            route.stats.observe_upstream(self.upstream_time)   # only the answering attempt is in the batch
            self.upstream_time = 0.0
            self.retry()   # this answer is dropped with its connection
            return
        up = conn   # typed (forwarding.pxd): its fields are read as C fields in the compiled build
        if not up.dated:
            headers.append(self.worker.date_line)   # a proxy adds the Date an origin left out (RFC 9110 §6.6.1)
        self.relay_head(status, headers, up.connection_tokens, up.content_length, up.chunked)

    def upstream_done(self, conn) -> None:
        self.upstream = None
        if self.finished:
            conn.abort()
            return
        if self.mode == CHUNKED or self.body_filters is not None:
            self.end_body()
        if self.observers is not None:
            self.observed_complete()
        target = self.target
        if self.upstream_keepalive and self.body_done and not self.upstream_delimited:
            target.release(conn)
        else:
            conn.abort()
        self.response = COMPLETE
        if not self.body_done:
            # The upstream answered before the request body ended: the client
            # connection cannot be reused (the rest of the body is unread).
            self.keep_alive = False
        self.finish()

    def upstream_closed(self, conn, exc) -> None:
        """The upstream connection ended while this exchange was using it."""
        self.upstream = None
        if self.finished:
            return
        if not self.head_received:
            if conn.reused and not conn.got_bytes and not self.sent_body and not self.replayed:
                # A pooled connection the upstream had closed: retry once on a fresh one.
                self.replayed = True
                target = self.target
                if target.reserve():
                    self.connect(target)
                    return
            self.failed_attempt("reset", 502, Reply.problem(502, "Bad Gateway",
                                                             "the upstream closed the connection without answering"))
            return
        if self.upstream_delimited and exc is None:
            self.end_body()
            if self.observers is not None:
                self.observed_complete()
            self.response = COMPLETE
            if not self.body_done:
                self.keep_alive = False
            self.finish()
            return
        # Truncated: end the client response as truncated, never as complete.
        self.conn.abort()

    def upstream_failed(self, kind: str, detail: str) -> None:
        """The upstream sent something unparseable."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        if self.finished:
            return
        if not self.head_received:
            self.failed_attempt("reset", 502, Reply.problem(502, "Bad Gateway", detail))
        elif self.response == WAITING:
            self.answer(Reply.problem(502, "Bad Gateway", detail))
        else:
            self.conn.abort()

    def check_deadline(self, now: float) -> bool:
        """Called by the worker's sweep once `deadline` passed; False = stop watching."""
        conn = self.upstream
        if self.finished or conn is None:
            return False
        read_timeout = self.target.settings.read_timeout
        if not self.body_done:
            deadline = conn.last_read + read_timeout
            if now >= deadline:
                self.abort_upstream()
                self.answer(Reply.problem(408, "Request Timeout", "the request body stalled"))
                return False
        elif not self.head_received:
            limit = self.route.timeout
            if self.time_limit and self.time_limit < limit:
                limit = self.time_limit   # the client's deadline (grpc-timeout)
            deadline = min(self.first_started + limit, conn.last_read + read_timeout)
            retries = self.pool.retries
            if retries is not None and retries.per_try_timeout:
                deadline = min(deadline, self.upstream_started + retries.per_try_timeout)
            if now >= deadline:
                self.abort_upstream()
                self.failed_attempt("timeout", 504, Reply.problem(504, "Gateway Timeout",
                                                                  "the upstream did not answer in time"))
                return False
        else:
            deadline = conn.last_read + read_timeout
            if now >= deadline:
                self.abort_upstream()
                self.conn.abort()
                return False
        self.deadline = deadline
        return True

    def failed_attempt(self, condition: str, status: int, reply: Reply, any_method: bool = False) -> None:
        """An attempt failed before any response reached the client: count it for
        the circuit breaker and outlier detection, then retry or answer."""
        self.pool.attempt_ended(self.target, False)
        if self.tracer is not None:
            self.tracer.attempt_ended(self, self.target, status, condition)
        if self.may_retry(condition, status, any_method):
            self.retry()
        else:
            self.answer(reply)

    def may_retry(self, condition: str, status: int, any_method: bool) -> bool:
        pool = self.pool
        cfg = pool.retries
        if cfg is None or self.finished or self.response != WAITING or self.attempt >= cfg.attempts:
            return False
        if condition not in cfg.on and str(status) not in cfg.on:
            return False
        if not any_method:
            # After the request went out, only idempotent requests without a
            # streamed body are repeated (RFC 9110 §9.2.2).
            if self.method not in _IDEMPOTENT or self.sent_body or not self.body_done or self.chunked \
                    or self.content_length:
                return False
        if CLOCK.now >= self.first_started + self.route.timeout:
            return False
        return pool.retry_allowed()

    def retry(self) -> None:
        pool = self.pool
        self.abort_upstream()
        pool.retry_started(self.tried is None)
        if self.tried is None:
            self.tried = set()
        self.tried.add(self.target)
        self.attempt += 1
        self.head_received = False
        self.upstream_keepalive = False
        self.upstream_delimited = False
        self.worker.inflight.discard(self)
        self.use_target(pool.choose(self, self.tried))

    def abort_upstream(self) -> None:
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()

    def finish(self) -> None:
        if self.finished:
            return
        if self.attempt:
            pool = self.pool
            pool.request_ended(self.tried is not None)   # the retry budget's accounting
        if self.admitted != 0.0:
            self.pool.concurrency.release(self)   # its slot, and its latency as a sample
        Relay.finish(self)


def choose_target(pool, exchange):
    """A target of `pool` for a request (a proxied one, a WebSocket handshake, a gRPC
    call): the target, or the Reply the gateway answers instead (circuit open, no
    healthy target)."""
    breaker = pool.breaker
    if breaker is not None and not breaker.allow():
        return Reply.problem(503, "Service Unavailable", f"the circuit to {pool.name} is open",
                             headers=[("retry-after", str(breaker.retry_after()))])
    if not pool.targets:   # targets from DNS, none found yet
        return Reply.problem(503, "Service Unavailable", f"{pool.name} has no targets yet",
                             headers=[("retry-after", "1")])
    target = pool.choose(exchange)
    if not target.healthy and not any_healthy(pool.targets):
        return Reply.problem(503, "Service Unavailable", f"no healthy target in {pool.name}",
                             headers=[("retry-after", "1")])
    return target


def any_healthy(targets) -> bool:
    # Outside the class: the compiled build allows no closure (this generator) in its methods.
    return any(t.healthy for t in targets)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
