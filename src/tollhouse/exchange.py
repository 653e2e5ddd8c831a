"""One request and its response: policies, upstream choice, relaying bytes.

An `Exchange` is what policies see as "the request". It is driven by
callbacks from both sides: the client connection (head, body, end) and the
upstream connection (head, body, end, failure). Nothing here creates a task
unless a policy must await or a new upstream connection must be opened.
"""
from __future__ import annotations

import logging
import re
import time
from http import HTTPStatus
from time import perf_counter

from .clock import CLOCK
from .flow import BODY_WAITING
from .pipeline import Reply
from .paths import BadPath, normalise_path

log = logging.getLogger("tollhouse.exchange")

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal or a
# reg-name (unreserved, pct-encoded, sub-delims), no userinfo, at most one port.
_SANE_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\]"
                        rb"|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_SANE_HOSTS: dict[bytes, bool] = {}
_NO_BODY_STATUS = frozenset((204, 304))
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_NORMAL_PATHS: dict[bytes, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_BODY_BUFFER_HIGH = 64 * 1024

# Response modes towards the client.
_NONE, _RAW, _CHUNKED = 0, 1, 2


class Exchange:
    """One request/response cycle on a client connection (the policies' view of a request).

    Public for policies: `method`, `path` (normalised), `query`, `params`
    (template variables), `route`, `request_id`, `client_ip`, `header(name)`,
    `set_header(name, value)`, `remove_header(name)`, `vars` (a dict for
    per-request state), `consumer`; on the response side `status` and
    `response_header(name)`, `set_response_header(name, value)`,
    `remove_response_header(name)`, `body_filter` (feed/finish, see
    docs/policies.md), `outcome(name)`; per-request state of a policy in its slot:
    `remember(slot, value)`, `recall(slot)`.

    Headers are kept as ready-to-send lines (b"Name: value\r\n", names as
    the peer spelled them): relaying them costs one join, and the helpers
    above compare names case-insensitively.
    """

    __slots__ = ("conn", "worker", "headers", "body_chunks",
                 "state", "route", "params", "method", "raw_target", "path", "query", "version", "host", "host_count", "request_id", "keep_alive", "content_length", "chunked", "te", "connection_tokens", "expect", "xff", "xfp", "xfh", "upgrade", "error", "body_buffered", "body_received", "body_done", "continue_sent", "upstream", "target", "started", "upstream_started", "upstream_clock", "deadline", "status", "response_headers", "head_sent", "head_received", "mode", "bytes_sent", "finished", "response_done", "task", "timer", "vars", "consumer", "replayed", "sent_body", "upstream_keepalive", "upstream_delimited", "_client_ip", "tier", "slots", "local", "authorization",
                 "attempt", "first_started", "tried", "observer",
                 "conditional", "cookie", "body_limit", "body_waiter", "body_progress", "body_filter",
                 "ended", "upstream_time", "duplicate")

    def __init__(self, conn, state):
        self.conn = conn
        self.worker = conn.worker
        self.headers: list[bytes] = []   # ready-to-send lines
        self.body_chunks: list[bytes] | None = []
        self.state = state
        self.route = None
        self.params = None
        self.method = b""
        self.raw_target = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"
        self.host = b""
        self.host_count = 0
        self.request_id = b""
        self.keep_alive = True
        self.content_length = None
        self.chunked = False
        self.te = None
        self.connection_tokens = None
        self.expect = None
        self.xff = None
        self.xfp = None
        self.xfh = None
        self.upgrade = False
        self.error = None
        self.body_buffered = 0
        self.body_received = 0
        self.body_done = False
        self.continue_sent = False
        self.upstream = None
        self.target = None
        self.started = 0.0
        self.upstream_started = 0.0
        self.upstream_clock = 0.0
        self.tier = None
        self.slots = None          # the route's policies' per-request state, by their slot (remember/recall)
        self.local = None
        self.authorization = None
        self.attempt = 0
        self.first_started = 0.0
        self.tried = None
        self.observer = None       # watches the upstream's response as it is relayed (the cache's Fill): head,
                                   # body, complete, finished, substitute (a Reply instead of a failure)
        self.conditional = False   # Range, If-None-Match or If-Modified-Since was sent
        self.cookie = False        # a Cookie header was sent (relayed; noted for the cache)
        self.body_limit = 0        # a route's own request body limit (policies/request)
        self.body_waiter = None    # called when the whole request body is buffered (policies/request)
        self.body_progress = 0.0   # when buffered body bytes last arrived (a stalled body gets 408)
        self.body_filter = None    # transforms response body bytes (policies/compress): feed(), finish()
        self.ended = 0.0           # perf_counter at finish (metrics and the access log read it later)
        self.upstream_time = 0.0   # seconds from sending upstream to the response head
        self.duplicate = None      # the name of a singleton header sent twice (400)
        self.deadline = 0.0
        self.status = 0
        self.response_headers = None
        self.head_sent = False
        self.head_received = False
        self.mode = _NONE
        self.bytes_sent = 0
        self.finished = False
        self.response_done = False
        self.task = None
        self.timer = None
        self.vars = None
        self.consumer = None
        self.replayed = False
        self.sent_body = False
        self.upstream_keepalive = False
        self.upstream_delimited = False
        self._client_ip = None

    # ----------------------------------------------------------------- policy API
    @property
    def client_ip(self) -> str:
        """The socket peer, or the first untrusted hop of X-Forwarded-For when the peer is a trusted proxy."""
        ip = self._client_ip
        if ip is None:
            ip = self.conn.peer_ip
            if self.xff and self.conn.peer_trusted:
                trusted = self.state.is_trusted
                for hop in reversed(self.xff.split(b",")):
                    hop_ip = hop.strip().decode("latin-1")
                    ip = hop_ip
                    if not trusted(hop_ip):
                        break
            self._client_ip = ip
        return ip

    def header(self, name: str) -> str | None:
        """The first value of a request header (case-insensitive), or None."""
        key = name.lower().encode()
        special = _SPECIAL_ATTR.get(key)
        if special is not None:
            value = getattr(self, special)
            return value.decode("latin-1") if value else None
        return _find(self.headers, key)

    def remember(self, slot: int, value) -> None:
        """Keep a policy's per-request state in its slot (`policy.slot`)."""
        slots = self.slots
        if slots is None:
            slots = self.slots = [None] * len(self.route.chain.policies)
        slots[slot] = value

    def recall(self, slot: int):
        """What the policy of `slot` remembered on this request, or None."""
        slots = self.slots
        return slots[slot] if slots is not None else None

    def outcome(self, name: str) -> str | None:
        """A policy's outcome on this request by its name (e.g. "cache" -> "HIT"), or None."""
        route = self.route
        if route is None:
            return None
        for found, label in route.chain.outcomes(self.slots):
            if found == name:
                return label
        return None

    def header_count(self, name: str) -> int:
        """How many times a request header was sent (case-insensitive)."""
        key = name.lower().encode()
        return len([line for line in self.headers if _line_name(line) == key])

    def set_header(self, name: str, value: str) -> None:
        """Set a header sent upstream (replacing any of that name)."""
        self.remove_header(name)
        self.headers.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1")))

    def remove_header(self, name: str) -> None:
        key = name.lower().encode()
        if key == b"authorization":
            self.authorization = None
        self.headers = _without(self.headers, {key})

    def response_header(self, name: str) -> str | None:
        return _find(self.response_headers or (), name.lower().encode())

    def set_response_header(self, name: str, value: str) -> None:
        self.remove_response_header(name)
        self.response_headers.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1")))

    def remove_response_header(self, name: str) -> None:
        self.response_headers = _without(self.response_headers, {name.lower().encode()})

    # ------------------------------------------------------------- head complete
    def finalise_head(self, limits) -> None:
        """Validate what only the whole head can tell (RFC 9112 §3.2, §6)."""
        if self.version not in ("1.1", "1.0"):
            self.error = Reply.problem(505, "HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served")
            self.keep_alive = False
            return
        if self.host_count > 1 or (self.host_count == 0 and self.version == "1.1"):
            self.error = Reply.problem(400, "Bad Request", "exactly one Host header is required")
            self.keep_alive = False
            return
        if self.duplicate is not None:
            self.error = Reply.problem(400, "Bad Request", f"more than one {self.duplicate.decode('latin-1')} header")
            self.keep_alive = False
            return
        if self.te is not None:
            if self.te.strip().lower() != b"chunked" or self.version == "1.0":
                # llhttp already refuses most bad codings; this catches "gzip, chunked" (RFC 9112 §6.1).
                self.error = Reply.problem(501, "Not Implemented", "only Transfer-Encoding: chunked is supported")
                self.keep_alive = False
                return
            self.chunked = True
        if self.method == b"CONNECT":
            self.error = Reply.problem(405, "Method Not Allowed", "CONNECT is not supported")
            self.keep_alive = False
            return
        if self.upgrade and (self.chunked or self.content_length):
            self.error = Reply.problem(400, "Bad Request", "an Upgrade request cannot carry a body")
            self.keep_alive = False
            return
        max_body = limits.max_body_bytes
        if max_body and self.content_length is not None and self.content_length > max_body:
            self.error = Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes")
            self.keep_alive = False
            return
        target = self.raw_target
        if not target.startswith(b"/"):
            if target.startswith((b"http://", b"https://")):
                # absolute-form (RFC 9112 §3.2.2): the authority replaces Host.
                rest = target.split(b"://", 1)[1]
                slash = rest.find(b"/")
                authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
                self.host = authority
            else:
                self.error = Reply.problem(400, "Bad Request", "unsupported request target")
                self.keep_alive = False
                return
        if not _sane_host(self.host):
            self.error = Reply.problem(400, "Bad Request", "invalid Host: expected host[:port]")
            self.keep_alive = False
            return
        q = target.find(b"?")
        raw_path = target if q < 0 else target[:q]
        self.query = b"" if q < 0 else target[q:]
        hash_at = raw_path.find(b"#")
        if hash_at >= 0:
            raw_path = raw_path[:hash_at]
        try:
            path = _NORMAL_PATHS.get(raw_path)
            if path is None:
                path = normalise_path(raw_path)
                if len(_NORMAL_PATHS) >= 8192:
                    _NORMAL_PATHS.clear()   # bounded: unique paths cannot grow it
                _NORMAL_PATHS[raw_path] = path
            self.path = path
        except BadPath as e:
            self.error = Reply.problem(400, "Bad Request", f"invalid path: {e}")
            self.keep_alive = False
            return
        if self.connection_tokens:
            drop = _tokens(self.connection_tokens) - {b"close", b"keep-alive"}
            if drop:
                self.headers = _without(self.headers, drop)
        rid = self.request_id
        if not rid or not _SANE_ID.fullmatch(rid):
            self.request_id = self.worker.next_request_id()

    # ------------------------------------------------------------------- start
    def start(self) -> None:
        """Route and run the chain (the connection calls this when it is this request's turn)."""
        worker = self.worker
        worker.active_requests += 1
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
                route.chain.run(self, self.start_local, self.answer)
            else:
                self.start_local()
            return
        # The request hooks, inline: the common all-None case creates nothing
        # on the way; anything else is the chain's to handle.
        i = 0
        for hook in route.chain.request_hooks:
            result = hook(self)
            if result is not None:
                route.chain.handle(self, result, i, self.proxy, self.answer)
                return
            i += 1
        self.proxy()

    # ------------------------------------------------------------------ proxy
    def proxy(self) -> None:
        if self.finished:
            return
        pool = self.route.upstream
        breaker = pool.breaker
        if breaker is not None and not breaker.allow():
            self.answer(Reply.problem(503, "Service Unavailable", f"the circuit to {pool.name} is open",
                                      headers=[("retry-after", str(breaker.retry_after()))]))
            return
        target = pool.single
        if target is None or not target.healthy or target.ejected_until > CLOCK.now:
            target = pool.choose(self)
        if not target.healthy and not _any_healthy(pool.targets):
            self.answer(Reply.problem(503, "Service Unavailable", f"no healthy target in {pool.name}",
                                      headers=[("retry-after", "1")]))
            return
        pool.request_started()
        self.attempt = 1
        self.first_started = CLOCK.now
        self.use_target(target)

    def use_target(self, target) -> None:
        self.target = target
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
        self.answer(Reply.problem(503, "Service Unavailable", "the upstream's connection limit is reached",
                                  headers=[("retry-after", "1")]))

    def send_upstream(self, conn) -> None:
        target = self.target
        route = self.route
        self.upstream = conn
        parts = [self.method, b" ", self.path if route.path_kept else route.upstream_path(self.path, self.params),
                 self.query, b" HTTP/1.1\r\nhost: ",
                 self.host if route.preserve_host else target.host_header, b"\r\n"]
        parts += self.headers
        client = self.conn
        if client.peer_trusted:
            peer = client.peer_ip_bytes
            parts += (b"x-forwarded-for: ", self.xff + b", " + peer if self.xff else peer,
                      b"\r\nx-forwarded-proto: ", self.xfp or client.scheme,
                      b"\r\nx-forwarded-host: ", self.xfh or self.host, b"\r\nx-request-id: ", self.request_id, b"\r\n")
        else:
            # "x-forwarded-for: <peer>\r\nx-forwarded-proto: <scheme>\r\nx-forwarded-host: ", once per connection
            parts += (client.forwarded, self.host, b"\r\nx-request-id: ", self.request_id, b"\r\n")
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif self.content_length is not None:
            parts += (b"content-length: %d\r\n\r\n" % self.content_length,)
        else:
            parts.append(b"\r\n")
        chunks = self.body_chunks
        if chunks:
            self.sent_body = True
            if self.chunked:
                for c in chunks:
                    parts += (b"%x\r\n" % len(c), c, b"\r\n")
            else:
                parts += chunks
        if self.chunked and self.body_done:
            parts.append(_LAST_CHUNK)
        self.body_chunks = None
        if self.body_buffered:
            self.body_buffered = 0
            self.conn.flow.resume(BODY_WAITING)
        self.upstream_started = CLOCK.now
        self.upstream_clock = perf_counter()
        conn.send(self, b"".join(parts), self.method == b"HEAD")
        if self.expect and not self.body_done and not self.continue_sent and not self.body_received:
            self.continue_sent = True
            self.conn.write(_CONTINUE)
        # Timeouts are checked by the worker's deadline sweep, not a timer
        # per request (a uvloop timer costs more than the rest of this method).
        self.deadline = self.upstream_started + route.first_wait
        self.worker.inflight.add(self)

    # ------------------------------------------------------- endpoints of the gateway
    def start_local(self) -> None:
        if self.finished:
            return
        self.local = self.route.local
        if self.body_done:
            self.run_local()

    def run_local(self) -> None:
        """Answer from a gateway endpoint (e.g. the OAuth token endpoint) with the whole body."""
        body = b"".join(self.body_chunks or ())
        result = self.local(self, body)
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
        self.answer(reply)

    # ------------------------------------------------------- request body (client)
    def feed_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        self.body_received += len(chunk)
        max_body = self.state.limits.max_body_bytes
        if self.body_limit and (not max_body or self.body_limit < max_body):
            max_body = self.body_limit
        if max_body and self.body_received > max_body:
            self.keep_alive = False
            self.abort_upstream()
            if self.head_sent:
                self.conn.abort()
            else:
                self.answer(Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes"))
            return
        if self.response_done:
            return
        up = self.upstream
        if up is not None:
            self.sent_body = True
            up.last_read = CLOCK.now  # upload progress counts as activity for read_timeout
            outgoing = up.outgoing
            if self.chunked:
                outgoing.write(b"%x\r\n" % len(chunk))
                outgoing.write(chunk)
                outgoing.write(b"\r\n")
            else:
                outgoing.write(chunk)
        elif self.body_chunks is not None:
            self.body_chunks.append(chunk)
            self.body_progress = CLOCK.now
            self.body_buffered += len(chunk)
            if self.body_buffered > _BODY_BUFFER_HIGH and self.body_waiter is None:
                if self.local is not None:
                    self.keep_alive = False
                    self.answer(Reply.problem(413, "Content Too Large", "this endpoint takes at most 64 KiB"))
                    return
                self.conn.flow.pause(BODY_WAITING)

    def body_complete(self) -> None:
        self.body_done = True
        if self.finished:
            return
        if self.local is not None and self.task is None and not self.response_done:
            self.run_local()
            return
        waiter = self.body_waiter
        if waiter is not None:
            self.body_waiter = None
            waiter()
            return
        up = self.upstream
        if up is not None:
            # Like Envoy's route timeout, the wait for the answer starts when the request is complete.
            self.upstream_started = up.last_read = CLOCK.now
            if self.chunked:
                up.outgoing.write(_LAST_CHUNK)
        if self.response_done:
            self.finish()

    # ----------------------------------------------------------- upstream side
    def upstream_head(self, conn, status: int, headers: list, keep_alive: bool) -> None:
        """`headers` arrive filtered by the upstream connection (hop-by-hop and framing removed)."""
        if self.finished:
            return
        self.head_received = True
        self.upstream_keepalive = keep_alive
        self.upstream_time = perf_counter() - self.upstream_clock
        route = self.route
        route.upstream.attempt_ended(self.target, status < 500)
        if status >= 500 and self.may_retry("status", status, False):
            route.stats.observe_upstream(self.upstream_time)   # only the answering attempt is in the batch
            self.upstream_time = 0.0
            self.retry()   # this answer is dropped with its connection
            return
        if conn.connection_tokens is not None:
            headers = _without(headers, _tokens(conn.connection_tokens))
        self.status = status
        self.response_headers = headers
        content_length = conn.content_length
        if self.method == b"HEAD" or status in _NO_BODY_STATUS:
            self.mode = _NONE
        elif content_length is not None and not conn.chunked:
            self.mode = _RAW
        else:
            if content_length is not None:
                self.response_headers = headers = _without(headers, {b"content-length"})
            if self.version == "1.1":
                self.mode = _CHUNKED
            else:
                self.mode = _RAW
                self.keep_alive = False
            if not conn.chunked:
                # Close-delimited upstream response (RFC 9112 §6.3 rule 8).
                self.upstream_delimited = True
        observer = self.observer
        if observer is not None:
            # The observer sees the upstream's own head, before any policy changes it.
            substitute = observer.head(self, status, content_length)
            if substitute is not None:   # stale_if_error: a stored response instead of this failure
                self.abort_upstream()
                self.answer(substitute)
                return
        hooks = route.chain.response_hooks
        if hooks:
            for hook in hooks:
                hook(self)
            if self.body_filter is not None and self.mode != _NONE:
                # The body changes length as it streams: chunked (or close-delimited for HTTP/1.0).
                self.response_headers = _without(self.response_headers, {b"content-length"})
                if self.version == "1.1":
                    self.mode = _CHUNKED
                else:
                    self.mode = _RAW
                    self.keep_alive = False
        self.write_head()

    def not_modified(self, lines: list[bytes]) -> None:
        """Answer 304 with `lines` instead of the upstream's response, whose body still
        arrives (for the cache) but is not relayed."""
        self.status = 304
        lines.append(b"date: %s\r\n" % self.worker.date)   # RFC 9110 §6.6.1: an origin-like answer has Date
        self.response_headers = lines
        self.mode = _NONE

    def write_head(self, body: bytes = b"") -> None:
        line = STATUS_LINES.get(self.status) or status_line(self.status)
        parts = [line, *self.response_headers, b"x-request-id: ", self.request_id, b"\r\n"]
        if self.mode == _CHUNKED:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n\r\n")
        elif self.version == "1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        if body:
            parts.append(body)
        self.head_sent = True
        self.conn.write(b"".join(parts))

    def upstream_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        if self.observer is not None:
            self.observer.body(chunk)
        if self.body_filter is not None:
            chunk = self.body_filter.feed(chunk)
            if not chunk:
                return
        mode = self.mode
        if mode == _RAW:
            self.conn.write(chunk)
        elif mode == _CHUNKED:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            return
        self.bytes_sent += len(chunk)

    def end_body(self) -> None:
        """The upstream's body ended: flush the body filter, end the chunked framing."""
        f = self.body_filter
        if f is not None and self.mode != _NONE:
            tail = f.finish()
            if tail:
                self.upstream_body_out(tail)
        if self.mode == _CHUNKED:
            self.conn.write(_LAST_CHUNK)

    def upstream_body_out(self, chunk: bytes) -> None:
        if self.mode == _CHUNKED:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)
        self.bytes_sent += len(chunk)

    def upstream_done(self, conn) -> None:
        self.upstream = None
        if self.finished:
            conn.abort()
            return
        if self.mode == _CHUNKED or self.body_filter is not None:
            self.end_body()
        if self.observer is not None:
            self.observer.complete(self)
        if self.upstream_keepalive and self.body_done and not self.upstream_delimited:
            self.target.release(conn)
        else:
            conn.abort()
        self.response_done = True
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
            if self.observer is not None:
                self.observer.complete(self)
            self.response_done = True
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
        elif not self.head_sent:
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
            deadline = min(self.first_started + self.route.timeout, conn.last_read + read_timeout)
            retries = self.route.upstream.retries
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
        self.route.upstream.attempt_ended(self.target, False)
        if self.may_retry(condition, status, any_method):
            self.retry()
        else:
            self.answer(reply)

    def may_retry(self, condition: str, status: int, any_method: bool) -> bool:
        pool = self.route.upstream
        cfg = pool.retries
        if cfg is None or self.finished or self.head_sent or self.attempt >= cfg.attempts:
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
        pool = self.route.upstream
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

    # ------------------------------------------------------------- local answers
    def answer(self, reply: Reply) -> None:
        """Send a local reply (from a policy or the gateway itself)."""
        if self.finished:
            return
        if self.head_sent:
            self.conn.abort()
            return
        if self.upstream is not None:
            self.abort_upstream()
        observer = self.observer
        if observer is not None and reply.status >= 500:
            reply = observer.substitute(self, time.time()) or reply   # the cache's stale_if_error
        if reply.problem_fields is None:
            body, content_type = reply.body, None
        else:
            body, content_type = reply.render_body(self.request_id.decode() if self.request_id else "")
        self.status = reply.status
        headers = reply.lines if reply.lines is not None else []   # a reply is answered once: its list is ours
        if reply.headers:
            headers += [b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        if content_type:
            headers.append(b"content-type: %s\r\n" % content_type.encode())
        no_body = reply.status in _NO_BODY_STATUS
        if not no_body:
            # RFC 9110 §8.6: none on 204, and a 304's would describe the stored body.
            # A HEAD answer states the length the GET body would have (§9.3.2).
            headers.append(b"content-length: %d\r\n" % len(body))
        self.response_headers = headers
        if not self.body_done:
            # The request body is unread; closing is the only safe way on.
            self.keep_alive = False
        route = self.route
        if route is not None and route.chain.response_hooks:
            for hook in route.chain.response_hooks:
                hook(self)
            f = self.body_filter
            if f is not None and body and not no_body:
                body = f.feed(body) + f.finish()
                self.response_headers = _without(self.response_headers, {b"content-length"})
                self.response_headers.append(b"content-length: %d\r\n" % len(body))
        headers = self.response_headers
        headers.append(b"date: %s\r\n" % self.worker.date)
        if no_body or self.method == b"HEAD":
            self.mode = _NONE
            body = b""
        self.write_head(body)   # one write: head and body
        self.bytes_sent = len(body)
        self.response_done = True
        self.finish()

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self._cancel_timer()
        if self.attempt:
            self.route.upstream.request_ended(self.tried is not None)
        if self.observer is not None:
            self.observer.finished(self)
        worker = self.worker
        worker.inflight.discard(self)
        if self.conn.background:
            self.conn.exchange_finished(self)   # a subrequest: not a client's request, so no metrics or log line
            return
        worker.active_requests -= 1
        # Metrics and the access log are taken from the worker's batch of ended exchanges.
        self.ended = perf_counter()
        worker.ended.append(self)
        self.conn.exchange_finished(self)

    def client_gone(self) -> None:
        """The client connection closed: stop everything, count it as 499."""
        if self.finished:
            return
        if self.task is not None:
            self.task.cancel()
        self.abort_upstream()
        if not self.response_done:
            self.status = 499  # nginx's "client closed request"
        self.finish()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_SPECIAL_ATTR = {b"host": "host", b"x-forwarded-for": "xff", b"x-forwarded-proto": "xfp",
                 b"x-forwarded-host": "xfh", b"x-request-id": "request_id", b"expect": "expect",
                 b"transfer-encoding": "te", b"connection": "connection_tokens", b"authorization": "authorization"}


def _sane_host(host: bytes) -> bool:
    known = _SANE_HOSTS.get(host)
    if known is None:
        known = _SANE_HOST.fullmatch(host) is not None
        if len(_SANE_HOSTS) >= 4096:
            _SANE_HOSTS.clear()   # bounded: made-up hosts cannot grow it
        _SANE_HOSTS[host] = known
    return known


def _line_name(line: bytes) -> bytes:
    return line[:line.find(b":")].strip().lower()


def _find(lines, key: bytes) -> str | None:
    for line in lines:
        if _line_name(line) == key:
            return line[line.find(b":") + 1:].strip().decode("latin-1")
    return None


def _without(lines, names: set) -> list:
    """Header lines whose (lower-case) name is not in `names`."""
    return [line for line in lines if _line_name(line) not in names]


# Comprehensions live in these helpers: the compiled build (setup.py) cannot
# have closures inside the methods it turns into C functions.
def _tokens(value: bytes) -> set:
    """The lower-case tokens of a comma-separated header value."""
    return {t.strip().lower() for t in value.split(b",")}


def _allow_list(methods) -> str:
    return ", ".join(sorted(m.decode() for m in methods))


def _any_healthy(targets) -> bool:
    return any(t.healthy for t in targets)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
