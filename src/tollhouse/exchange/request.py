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

from ..registry import installed
from .sink import ResponseSink

# Response modes towards the client (server.http1).
NONE, RAW, CHUNKED = 0, 1, 2
# How far the response to the client has got (Request.response): one state instead of flags.
WAITING, HEAD_SENT, COMPLETE = 0, 1, 2


class Request(ResponseSink):
    """One request/response cycle (the policies' view of a request).

    Public for policies: `method`, `path` (normalised), `query`, `params`
    (template variables), `route`, `request_id`, `client_ip`, `header(name)`,
    `noted_value(index)` (a header a kind declared: registry.NotedHeader),
    `set_header(name, value)`, `remove_header(name)`, `vars` (a dict for
    per-request state), `identity` (who is calling, or None: tollhouse.identity)
    and `consumer` (its id); `add_body_reader(reader)` (the request body as it
    arrives); on the response side `status` and `response_header(name)`,
    `set_response_header(name, value)`, `remove_response_header(name)`,
    `add_body_filter(filter)`, `add_observer(observer)` (see docs/policies.md),
    `outcome(name)`; per-request state of a policy in its slot:
    `remember(slot, value)`, `recall(slot)`.
    """

    __slots__ = ("conn", "codec", "headers", "body_chunks", "state", "route", "params", "method", "raw_target",
                 "path", "query", "version", "host", "host_count", "request_id", "keep_alive", "content_length",
                 "chunked", "te", "connection_tokens", "expect", "xff", "xfp", "xfh", "upgrade", "error",
                 "body_buffered", "body_received", "body_done", "continue_sent", "upstream", "pool", "target",
                 "started", "upstream_started", "upstream_clock", "deadline", "status", "response_headers",
                 "response", "head_received", "mode", "bytes_sent", "finished", "task", "timer", "vars", "replayed",
                 "sent_body", "upstream_keepalive", "upstream_delimited", "_client_ip", "slots", "local", "attempt",
                 "first_started", "tried", "body_limit", "body_waiter", "body_progress", "ended", "upstream_time",
                 "duplicate", "tracer", "outcomes", "observers", "body_readers", "body_filters", "noted", "identity",
                 "trailers", "request_trailers", "grpc_status", "time_limit", "admitted")

    def __init__(self, conn, state):
        self.setup(conn, state)

    def setup(self, conn, state) -> None:
        """__init__'s work: lifecycle.new_exchange makes an exchange with __new__ and calls
        this in C (no call through the type, no argument parsing)."""
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
        self.pool = None           # the upstream pool chosen for this request (RouteTarget.choose_pool)
        self.target = None
        self.started = 0.0
        self.upstream_started = 0.0
        self.upstream_clock = 0.0
        self.slots = None          # the route's policies' per-request state, by their slot (remember/recall)
        self.local = None
        self.attempt = 0
        self.first_started = 0.0
        self.tried = None
        self.observers = None      # watch the upstream's response as it is relayed (add_observer)
        self.body_limit = 0        # the route's own request body limit, when a policy sets one
        self.body_waiter = None    # called when the whole request body is buffered (a policy waiting for it)
        self.body_readers = None   # read the request body as it arrives (add_body_reader)
        self.body_progress = 0.0   # when buffered body bytes last arrived (a stalled body gets 408)
        self.body_filters = None   # transform the response body, in the route's phase order (add_body_filter)
        self.ended = 0.0           # perf_counter at finish (metrics and the access log read it later)
        self.upstream_time = 0.0   # seconds from sending upstream to the response head
        self.duplicate = None      # the name of a singleton header sent twice (400)
        self.tracer = None         # hooks around each policy and upstream attempt (see pipeline.Tracer)
        self.outcomes = ()         # the policies' outcome labels, read once the exchange ended (Stats.fold)
        self.noted = None          # the values of the headers kinds declared, by index (noted_value), once one came
        self.identity = None       # who is calling (tollhouse.identity.Identity), set by an auth provider
        self.trailers = None       # the response's trailer lines (HTTP/2 and gRPC), relayed after the body
        self.request_trailers = None   # an HTTP/2 client's trailer lines, sent upstream after the body
        self.grpc_status = -1      # a gRPC call's status (its trailers' grpc-status, or the refusal's), -1 if none
        self.time_limit = 0.0      # the client's own deadline in seconds (grpc-timeout), when shorter than the route's
        self.admitted = 0.0        # when an adaptive concurrency limit let it through (upstream/concurrency.py)
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

    @property
    def consumer(self) -> str | None:
        """The calling consumer's id (`identity.consumer`), or None when anonymous."""
        identity = self.identity
        return identity.consumer if identity is not None else None

    def header(self, name: str) -> str | None:
        """The first value of a request header (case-insensitive), or None."""
        key = name.lower().encode()
        special = _SPECIAL_ATTR.get(key)
        if special is not None:
            value = getattr(self, special)
            return value.decode("latin-1") if value else None
        return find_header(self.headers, key)

    def noted_value(self, index: int):
        """The value (bytes) of the noted header at `index` (registry.noted_index), or None."""
        noted = self.noted
        return noted[index] if noted is not None else None

    def noted_any(self, indexes: tuple) -> bool:
        """Whether any of the noted headers at `indexes` was sent."""
        noted = self.noted
        if noted is None:
            return False
        for i in indexes:
            if noted[i] is not None:
                return True
        return False

    def add_observer(self, observer) -> None:
        """Watch the upstream's response as it is relayed, before any policy changes it:
        `observer.head(exchange, status, content_length)` (may return a Reply to send
        instead), `body(chunk)`, `complete(exchange)`, `finished(exchange)`, and
        `substitute(exchange, now)` (a Reply instead of a failure, or None). Observers
        are called in the order they were added."""
        if self.observers is None:
            self.observers = [observer]
        else:
            self.observers.append(observer)

    def add_body_filter(self, body_filter) -> None:
        """Transform the response body as it streams: `feed(chunk) -> bytes`, `finish() -> bytes`.
        Added from `on_response` (which runs in reverse phase order), a filter goes before
        those added already, so the body passes the filters in the route's phase order:
        a custom policy's filter (phase access) sees the plain body, compression
        (phase transform) the result."""
        if self.body_filters is None:
            self.body_filters = [body_filter]
        else:
            self.body_filters.insert(0, body_filter)

    def add_body_reader(self, reader):
        """Read the request body as it arrives, before it goes upstream: `feed(exchange,
        chunk)` and `end(exchange)`, each returning None or a Reply that answers the request
        instead (the upstream attempt, if any, is dropped and the connection closes).
        Readers are called in the order they were added. The body read so far is fed at
        once: the Reply the reader answers for it is returned (for `on_request` to return)."""
        if self.body_readers is None:
            self.body_readers = [reader]
        else:
            self.body_readers.append(reader)
        for chunk in self.body_chunks or ():
            refusal = reader.feed(self, chunk)
            if refusal is not None:
                return refusal
        return reader.end(self) if self.body_done else None

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
        if self.noted is not None:
            index = noted_index_of(name)
            if index >= 0:
                self.noted[index] = None
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
        if self.observers is not None:
            for observer in self.observers:
                observer.finished(self)
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
                 b"transfer-encoding": "te", b"connection": "connection_tokens"}


def noted_index_of(name: str) -> int:
    """The index of a noted header (registry.NotedHeader), or -1 when no kind declared it."""
    noted = installed().headers.get(name.lower())
    return noted.index if noted is not None else -1


def _line_name(line: bytes) -> bytes:
    return line[:line.find(b":")].strip().lower()


def find_header(lines, key: bytes) -> str | None:
    """The first value of header `key` (lower-case bytes) among ready-to-send lines, or None."""
    for line in lines:
        if _line_name(line) == key:
            return line[line.find(b":") + 1:].strip().decode("latin-1")
    return None


def cookie_value(exchange, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie header(s), or None."""
    for line in exchange.headers:
        if _line_name(line) == b"cookie":
            for part in line[line.find(b":") + 1:].decode("latin-1").split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value
    return None


def without(lines, names: set) -> list:
    """Header lines whose (lower-case) name is not in `names`."""
    return [line for line in lines if _line_name(line) not in names]


# Comprehensions live in these helpers: the compiled build (setup.py) cannot
# have closures inside the methods it turns into C functions.
def tokens(value: bytes) -> set:
    """The lower-case tokens of a comma-separated header value."""
    return {t.strip().lower() for t in value.split(b",")}
