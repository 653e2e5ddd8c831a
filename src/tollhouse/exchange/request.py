"""The request as policies see it: what was asked, who asked, and the policy API.

`Request` holds every field of one request/response cycle; the layers above
it add behaviour by concern, each in its own module of this package: the
response towards the client (`relay.Relay`: relayed heads and bodies, local
answers, through the connection's codec), forwarding
(`forwarding.Forwarding`: target, pool, attempts, retries, deadlines) and the
lifecycle (`lifecycle.Exchange`: routing, the chain, the gateway's own
endpoints). One object per request, in layers: a second object per request
would cost an allocation and a pointer chase on every call between them, on
the path every request takes (docs/benchmarks.md). The framing is not a
layer but the connection's `codec`, chosen once per connection.

Headers are kept as ready-to-send lines (b"Name: value\r\n", names as the
peer spelled them): relaying them costs one join, and the helpers compare
names case-insensitively.
"""
from __future__ import annotations

from time import perf_counter

from .sink import ResponseSink

# Response modes towards the client (server.http1).
NONE, RAW, CHUNKED = 0, 1, 2
# How far the response to the client has got (Request.response): one state instead of flags.
WAITING, HEAD_SENT, COMPLETE = 0, 1, 2


class Request(ResponseSink):
    """One request/response cycle (the policies' view of a request).

    Public for policies: `method`, `path` (normalised), `query`, `params`
    (template variables), `route`, `request_id`, `client_ip`, `header(name)`,
    `set_header(name, value)`, `remove_header(name)`, `vars` (a dict for
    per-request state), `consumer`; on the response side `status` and
    `response_header(name)`, `set_response_header(name, value)`,
    `remove_response_header(name)`, `body_filter` (feed/finish, see
    docs/policies.md), `outcome(name)`; per-request state of a policy in its slot:
    `remember(slot, value)`, `recall(slot)`.
    """

    __slots__ = ("conn", "codec", "headers", "body_chunks", "state", "route", "params", "method", "raw_target",
                 "path", "query", "version", "host", "host_count", "request_id", "keep_alive", "content_length",
                 "chunked", "te", "connection_tokens", "expect", "xff", "xfp", "xfh", "upgrade", "error",
                 "body_buffered", "body_received", "body_done", "continue_sent", "upstream", "target", "started",
                 "upstream_started", "upstream_clock", "deadline", "status", "response_headers", "response",
                 "head_received", "mode", "bytes_sent", "finished", "task", "timer", "vars", "consumer", "replayed",
                 "sent_body", "upstream_keepalive", "upstream_delimited", "_client_ip", "tier", "slots", "local",
                 "authorization", "attempt", "first_started", "tried", "observer", "conditional", "cookie",
                 "body_limit", "body_waiter", "body_progress", "body_filter", "ended", "upstream_time", "duplicate",
                 "tracer", "outcomes", "debug_token", "traceparent")

    def __init__(self, conn, state):
        self.conn = conn
        self.codec = conn.codec   # the framing towards this client (exchange/codec.py)
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
        self.tracer = None         # hooks around each policy and upstream attempt (see pipeline.Tracer)
        self.outcomes = ()         # the policies' outcome labels, read once the exchange ended (Stats.fold)
        self.debug_token = None    # X-Tollhouse-Debug as sent (never relayed; see observability/debug.py)
        self.traceparent = None    # the W3C traceparent as sent (relayed too; see observability/tracing.py)
        self.deadline = 0.0
        self.status = 0
        self.response_headers = None
        self.response = WAITING    # how far the response to the client has got: WAITING, HEAD_SENT, COMPLETE
        self.head_received = False
        self.mode = NONE
        self.bytes_sent = 0
        self.finished = False
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
        return find_header(self.headers, key)

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
        return self.named_outcomes().get(name)

    def named_outcomes(self) -> dict:
        """Outcome name -> label of the policies that noted one on this request."""
        route = self.route
        return route.chain.named_outcomes(self.slots) if route is not None else {}

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
        self.headers = without(self.headers, {key})

    def response_header(self, name: str) -> str | None:
        return find_header(self.response_headers or (), name.lower().encode())

    def set_response_header(self, name: str, value: str) -> None:
        self.remove_response_header(name)
        self.response_headers.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1")))

    def remove_response_header(self, name: str) -> None:
        self.response_headers = without(self.response_headers, {name.lower().encode()})

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """The exchange is over (answered, failed or abandoned): count it, log it, free the connection."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self._cancel_timer()
        if self.observer is not None:
            self.observer.finished(self)
        if self.tracer is not None:
            self.tracer.finished(self)
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

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_SPECIAL_ATTR = {b"host": "host", b"x-forwarded-for": "xff", b"x-forwarded-proto": "xfp",
                 b"x-forwarded-host": "xfh", b"x-request-id": "request_id", b"expect": "expect",
                 b"transfer-encoding": "te", b"connection": "connection_tokens", b"authorization": "authorization"}


def _line_name(line: bytes) -> bytes:
    return line[:line.find(b":")].strip().lower()


def find_header(lines, key: bytes) -> str | None:
    """The first value of header `key` (lower-case bytes) among ready-to-send lines, or None."""
    for line in lines:
        if _line_name(line) == key:
            return line[line.find(b":") + 1:].strip().decode("latin-1")
    return None


def without(lines, names: set) -> list:
    """Header lines whose (lower-case) name is not in `names`."""
    return [line for line in lines if _line_name(line) not in names]


# Comprehensions live in these helpers: the compiled build (setup.py) cannot
# have closures inside the methods it turns into C functions.
def tokens(value: bytes) -> set:
    """The lower-case tokens of a comma-separated header value."""
    return {t.strip().lower() for t in value.split(b",")}
