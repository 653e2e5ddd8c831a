"""Response aggregation (docs/contract.md §2 route `aggregate`; docs/aggregation.md).

A route with `aggregate` has no upstream of its own: after the route's
policies (auth, limits, ip, cors, cache) pass, every backend is called in
parallel through the core's subrequest API (its upstream's pool, balancer,
health, retries and circuit breaker, with the caller's headers, identity
headers and request id) and the JSON answers are merged into one object,
under the backends' own names, in configured order: the same answers always
give the same bytes. The merged answer goes out the way an upstream's does,
so the cache can store it and the response policies (headers, compress,
cors) shape it.
"""
from __future__ import annotations

import inspect
import logging
import re
from time import perf_counter
from urllib.parse import quote

import orjson
import simdjson

from ..config.loader import ConfigError
from ..config.schema import MISSING, Bool, Duration, Field, Kind, MapOf, Schema, Str, error_at
from ..pipeline import Policy, Reply, load_object
from ..registry import PolicyKind
from ..exchange.subrequest import Completion, begin_subrequest

log = logging.getLogger("tollhouse.aggregate")

#: Variables every backend path may use, besides the route's path parameters.
BUILTIN_VARS = ("consumer", "request_id", "client_ip")
#: Per-backend results counted in tollhouse_aggregate_backend_results_total.
RESULTS = ("ok", "client_error", "server_error", "timeout", "unavailable", "invalid")
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
class _Absent:
    """No `default`: a failed backend's name is left out of the answer."""

    def __repr__(self) -> str:
        return "absent"


_ANY = _Absent()


class _AnyJson(Kind):
    """Any YAML value (it is sent as JSON): the `default` of a backend."""

    label = "any JSON value"

    def validate(self, value, path, line, errors):
        try:
            orjson.dumps(value)
        except TypeError:
            errors.append(ConfigError(path, line, f"cannot be written as JSON: {value!r}"))
            return MISSING
        return value


class Backend(Schema):
    upstream = Field(Str(), doc="name of an upstream in `upstreams`")
    path = Field(Str(pattern=r"/[^\s]*"), doc="path and query sent to it; {param}, {consumer}, {request_id}, "
                 "{client_ip} are filled in, percent-encoded")
    timeout = Field(Duration(min=0.001), None, "its own deadline (default: the route's timeout)")
    required = Field(Bool(), False, "its failure fails the whole answer (502, or its own 4xx)")
    default = Field(_AnyJson(), _ANY, "used under its name when it fails (absent: the name is left out)")


class Aggregate(Schema):
    backends = Field(MapOf(Backend, key_pattern=r"[A-Za-z][A-Za-z0-9_-]*"),
                     doc="name -> {upstream, path, timeout, required, default}, merged in this order")
    all_or_nothing = Field(Bool(), False, "any failed backend fails the whole answer")
    merge = Field(Str(pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"), "",
                  "module:function receiving the dict of answers and returning the body")

    def check(self, path, lines, line, errors):
        if not self.backends:
            error_at(errors, path, "backends", lines, line, "needs at least one backend")
        for name in self.backends:
            if name.startswith("_"):
                error_at(errors, path, "backends", lines, line, f"{name!r}: names starting with _ are reserved")
        if self.merge:
            try:
                load_function(self.merge)
            except ValueError as e:
                error_at(errors, path, "merge", lines, line, str(e))


def load_function(spec: str):
    """Import `module:function`; ValueError with a readable reason otherwise."""
    fn = load_object(spec)
    if not callable(fn):
        module_name, _, name = spec.partition(":")
        raise ValueError(f"{module_name} has no function {name}")
    return fn


def check_route(route, where: str, config, errors: list) -> None:
    """Rules between a route's `aggregate` and the rest of the config (the kind's `check`)."""
    agg = route.aggregate
    if agg is None:
        return
    upstreams = config.upstreams
    if route.upstream:
        errors.append(ConfigError(f"{where}.upstream", None, "an aggregate route has no upstream of its own: "
                                                              "each backend names one"))
    methods = set(route.match.methods or ())
    if methods - {"GET", "HEAD"}:
        errors.append(ConfigError(f"{where}.match.methods", None, "an aggregate route takes GET and HEAD only "
                                                                    "(request bodies are not fanned out)"))
    params = set(_VAR.findall(route.match.path or ""))
    for name, b in agg.backends.items():
        at = f"{where}.aggregate.backends.{name}"
        if b.upstream not in upstreams:
            errors.append(ConfigError(f"{at}.upstream", None, f"no upstream named {b.upstream!r} in upstreams"))
        for var in _VAR.findall(b.path):
            if var not in params and var not in BUILTIN_VARS:
                errors.append(ConfigError(f"{at}.path", None, f"{{{var}}} is not a path parameter of the route "
                                                                f"nor one of {', '.join(BUILTIN_VARS)}"))


def _encode(value: str, safe: str = "") -> str:
    # Every reserved character is encoded ("/" too: a value never adds a path segment;
    # "&", "=", "?", "#" never change the query), and a value of only dots is encoded as
    # well, so it cannot climb the path.
    encoded = quote(value, safe=safe)
    return encoded.replace(".", "%2E") if encoded and encoded.strip(".") == "" else encoded


class _Backend:
    __slots__ = ("name", "upstream", "parts", "fixed", "timeout", "required", "default", "labels", "results", "key",
                 "duration")

    def __init__(self, name, cfg, route_timeout, route_name):
        self.name = name
        self.upstream = cfg.upstream
        # The path template split into literal text and variable names, once.
        pieces = _VAR.split(cfg.path)
        self.parts = tuple((i % 2 == 1, p) for i, p in enumerate(pieces) if p)
        self.fixed = None   # the path, when it has no variable: made once
        if len(pieces) == 1 and cfg.path.isascii():
            self.fixed = cfg.path.encode("latin-1")
        self.timeout = cfg.timeout if cfg.timeout is not None else route_timeout
        self.required = cfg.required
        self.default = cfg.default
        self.labels = (("backend", name), ("route", route_name))
        self.results = None   # result -> its counter (a Tally of the worker's): set by the policy
        self.key = orjson.dumps(name) + b":"   # its place in the merged object
        self.duration = None   # its histogram, the worker's: set by the policy

    def target(self, exchange) -> bytes:
        if self.fixed is not None:
            return self.fixed
        out = []
        for is_var, text in self.parts:
            if not is_var:
                out.append(text)
                continue
            if text == "consumer":
                value = exchange.consumer or ""
            elif text == "request_id":
                value = exchange.request_id.decode("latin-1")
            elif text == "client_ip":
                value = exchange.client_ip
            else:
                # A path parameter is a segment of the normalised path, already
                # percent-encoded: its escapes are kept, nothing else is let through.
                value = (exchange.params or {}).get(text, b"")
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                out.append(_encode(value, "%"))
                continue
            out.append(_encode(value))
        return "".join(out).encode("latin-1")


class AggregatePolicy(Policy):
    """Answers its route itself, from its backends (`terminal`); its outcome in the access
    log is "complete", or which backends failed."""

    __slots__ = ("backends", "all_or_nothing", "merge", "route_name")

    phase = "transform"
    outcome = "aggregate"
    terminal = True

    default_methods = ("GET", "HEAD")   # request bodies are not fanned out

    def __init__(self, config: Aggregate, context):
        super().__init__(config, context)
        self.route_name = context.route_name
        timeout = context.route.timeout
        self.backends = tuple(_Backend(n, b, timeout, context.route_name) for n, b in config.backends.items())
        self.all_or_nothing = config.all_or_nothing
        self.merge = load_function(config.merge) if config.merge else None
        stats = context.stats
        for b in self.backends:
            b.results = {result: stats.tally("aggregate_backend_results", (*b.labels, ("result", result)))
                         for result in RESULTS}
            b.duration = stats.histogram("aggregate_backend_duration_seconds", b.labels)

    def respond(self, exchange, body: bytes):
        """Call every backend at once; the merged JSON, or the failure (§5), is answered when
        the last one is in (no task: each call's end counts itself in, `_Fanout`)."""
        fanout = _Fanout.__new__(_Fanout)   # (made in C: no __init__ call, no argument parsing)
        fanout.setup(self, exchange, len(self.backends))
        worker = exchange.worker
        pools = worker.state.pools
        for i, b in enumerate(self.backends):
            pool = pools.get(b.upstream)
            if pool is None:   # its upstream left in a reload while this request waited
                fanout.arrived(i, LookupError(f"no upstream {b.upstream!r}"))
                continue
            # start_subrequest's work, called in C (its options positional).
            begin_subrequest(worker, pool, b"GET", b.target(exchange), exchange.headers, b"", b.timeout, exchange, None,
                             None, b.name, None, fanout, i)
        return None

    def answered(self, exchange, answers: list, started: float) -> None:
        """Every backend's answer is in: the exchange gets the merged answer or the failure."""
        if exchange.finished:
            return   # the client went away meanwhile
        reply = self._merged(exchange, answers, started)
        if reply.__class__ is Reply:
            exchange.answer(reply)
        elif reply is not None:
            exchange.worker.loop.create_task(reply)   # an async merge function's: it answers when done

    def _merge_failed(self) -> Reply:
        """The 500 for a merge function that raised (called where it is caught: logged with it)."""
        log.exception("aggregate merge %s failed on route %s", self.config.merge, self.route_name)
        return Reply.problem(500, "Internal Server Error", "the route's merge function failed")

    def _merged(self, exchange, answers: list, started: float):
        """The answer from the backends': None once answered (exchange.respond), a Reply (a
        failure), or a coroutine that answers (an async merge function's result)."""
        merged: dict = {}
        errors: dict = {}
        fatal = None
        keep = self.merge is not None   # without a merge function the answers are only checked, then spliced
        backends = self.backends
        for i in range(len(backends)):   # (an index, not zip: no iterator made per request)
            b = backends[i]
            answer = answers[i]
            result, value, error = _judge(answer, keep)
            tally = b.results[result]
            tally.value += 1
            b.duration.observe(answer.elapsed if not isinstance(answer, BaseException) else perf_counter() - started)
            if error is None:
                merged[b.name] = value
                continue
            errors[b.name] = error
            if (b.required or self.all_or_nothing) and fatal is None:
                fatal = b
            if b.default is not _ANY:
                merged[b.name] = b.default
        if fatal is not None:
            exchange.remember(self.slot, "failed: " + ",".join(errors))
            status = errors[fatal.name]["status"]
            # A required backend's 4xx is the caller's error: its status passes through.
            status = status if 400 <= status < 500 else 502
            return Reply.problem(status, "Bad Gateway" if status == 502 else "Backend Refused",
                                 f"backend {fatal.name!r} failed" + (" (all_or_nothing)" if not fatal.required else ""),
                                 backends=errors)
        if errors:
            merged["_errors"] = errors
            exchange.remember(self.slot, "partial: " + ",".join(errors))
        else:
            exchange.remember(self.slot, "complete")
        if self.merge is None:
            return self._respond(exchange, _spliced(self.backends, answers, merged, errors), errors)
        try:
            out = self.merge(merged)
            if inspect.isawaitable(out):
                return self._respond_later(exchange, out, errors)
            return self._respond(exchange, out, errors)
        except Exception:  # noqa: BLE001 - the user's merge failed: logged, 500
            return self._merge_failed()

    async def _respond_later(self, exchange, pending, errors: dict) -> None:
        try:
            out = await pending
            if not exchange.finished:
                self._respond(exchange, out, errors)
        except Exception:  # noqa: BLE001 - the user's merge failed: logged, 500
            reply = self._merge_failed()
            if not exchange.finished:
                exchange.answer(reply)

    def _respond(self, exchange, out, errors: dict) -> None:
        payload = out if isinstance(out, bytes) else out.encode() if isinstance(out, str) else orjson.dumps(out)
        if errors:   # a partial answer is never cached
            lines = [b"content-type: application/json\r\n", b"x-aggregate-complete: false\r\n",
                     b"cache-control: no-store\r\n"]
        else:
            lines = [b"content-type: application/json\r\n", b"x-aggregate-complete: true\r\n"]
        exchange.respond(200, lines, payload)
        return None


class _Fanout(Completion):
    """One aggregated request's backends: their answers as they end, in configured order
    (each backend call's Completion); when the last is in, the policy answers."""

    __slots__ = ("policy", "exchange", "answers", "left", "started")

    def setup(self, policy: AggregatePolicy, exchange, count: int) -> None:
        """In place of __init__: the policy makes a fan-out with __new__ and calls this in C."""
        self.policy, self.exchange = policy, exchange
        self.answers: list = [None] * count
        self.left = count
        self.started = perf_counter()

    def arrived(self, index: int, answer) -> None:
        self.answers[index] = answer
        self.left -= 1
        if not self.left:
            self.policy.answered(self.exchange, self.answers, self.started)


def _spliced(backends: tuple, answers: list, merged: dict, errors: dict) -> bytes:
    """The merged object without a merge function: each usable answer as its backend sent it
    (it was parsed only to check it, and is not serialised again), a failed one's default."""
    parts = [b"{"]   # one join: "{", then each key, its value and a comma, the last comma made "}"
    for i in range(len(backends)):
        b = backends[i]
        if not errors or b.name not in errors:
            answer = answers[i]
            parts.append(b.key)
            parts.append(answer.body)
            parts.append(b",")
        elif b.name in merged:
            parts.append(b.key)
            parts.append(orjson.dumps(merged[b.name]))
            parts.append(b",")
    if errors:
        parts += (b'"_errors":', orjson.dumps(errors), b",")
    parts[-1] = b"}"   # never the "{": a route has a backend, and each is spliced, defaulted or in _errors
    return b"".join(parts)


def _judge(answer, keep: bool) -> tuple[str, object, dict | None]:
    """(result, parsed JSON or None, None) for a usable answer, else (result, None, {status, detail}).
    `keep`: the parsed value is wanted (a merge function reads it); otherwise the body is only checked."""
    if isinstance(answer, BaseException):
        return "unavailable", None, {"status": 502, "detail": f"{type(answer).__name__}: {answer}"}
    sub = answer   # a SubResponse (its fields read in C)
    status = sub.status
    if sub.local:
        # The gateway answered for the upstream: it could not be reached in time.
        result = "timeout" if status == 504 else "unavailable"
        detail = _problem_detail(sub.body) or "the upstream did not answer"
        return result, None, {"status": status, "detail": detail}
    if status >= 500:
        return "server_error", None, {"status": status, "detail": f"the upstream answered {status}"}
    if status >= 400:
        return "client_error", None, {"status": status, "detail": f"the upstream answered {status}"}
    if keep:
        try:
            return "ok", orjson.loads(sub.body), None
        except orjson.JSONDecodeError:
            pass
    elif _is_json(sub.body):
        return "ok", None, None
    return "invalid", None, {"status": 502, "detail": "the upstream's answer is not JSON"}


_CHECKER = simdjson.Parser()
_BOM = b"\xef\xbb\xbf"


def _is_json(body: bytes) -> bool:
    """Whether `body` is one JSON text that can be spliced into the merged object: orjson's verdict,
    at a quarter of its cost. simdjson builds no Python objects (its document is dropped at once,
    so the parser is free again); it accepts a leading byte-order mark, which cannot be spliced, and
    refuses integers beyond 64 bits, which are JSON: those and any refusal go to orjson."""
    try:
        _CHECKER.parse(body)
        return not body.startswith(_BOM)
    except (ValueError, RuntimeError):   # RuntimeError: nested deeper than simdjson's limit
        pass
    try:
        orjson.loads(body)
        return True
    except orjson.JSONDecodeError:
        return False


def _problem_detail(body: bytes) -> str | None:
    try:
        return orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return None


KIND = PolicyKind(
    "aggregate", phase=AggregatePolicy.phase, key="aggregate", outcome=AggregatePolicy.outcome,
    build=lambda config, context, services: None if config is None else AggregatePolicy(config, context),
    check=check_route, own_upstream=False,
    field=Field(Aggregate, None, "{backends: {name: {upstream, path, timeout, required, default}}, all_or_nothing, "
                                 "merge}: fan out in parallel, merge the JSON answers; see docs/aggregation.md"))
