"""OpenTelemetry traces (docs/operations.md, "Tracing").

With `tracing` set, each sampled request has a SERVER span named
`{METHOD} {route template}` and one CLIENT span per upstream attempt (retries
carry `http.request.resend_count`), with the stable HTTP semantic
conventions' attributes and `tollhouse.*` ones; policy decisions are span
events. The client's W3C `traceparent` is honoured (parent-based sampling)
and the upstream receives a `traceparent` whose parent is the CLIENT span.
The request path keeps only raw facts (ids, times, what the spans are made
of); spans are built and encoded with `opentelemetry-proto` in batches and
POSTed (OTLP/HTTP, protobuf) off the loop; a collector that is down or slow loses spans, never
requests. Why not the SDK: its span objects, processors and context
machinery cost several µs per span, and a 1 % sample must cost almost
nothing on the other 99 %.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
import urllib.request
from random import getrandbits, random

from ..config.schema import Field, Float, Schema, Str
from ..pipeline import Tracer
from ..registry import NotedHeader, Section, noted_index

log = logging.getLogger("tollhouse.tracing")

BATCH_EVERY = 0.5        # seconds between exports
MAX_QUEUED = 20000       # traced requests waiting beyond this are dropped (and their spans counted)
EXPORT_TIMEOUT = 2.0
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
HEADER = "traceparent"   # W3C trace context: noted for the sampler, relayed
NEVER = 1 << 62   # a skip no worker reaches


class Sampler(Schema):
    type = Field(Str(choices=("always_on", "always_off", "ratio", "parent_based")), "parent_based",
                 "always_on | always_off | ratio | parent_based (the client's sampled flag, else ratio)")
    ratio = Field(Float(min=0.0, max=1.0), 0.01, "share of traces sampled (ratio, parent_based without a parent)")


class Tracing(Schema):
    endpoint = Field(Str(pattern=r"https?://.+"), doc="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces")
    service_name = Field(Str(), "tollhouse", "service.name of the spans")
    sampler = Field(Sampler, Sampler(), "which requests are traced")


def parse_traceparent(value: bytes | None):
    """(trace id, parent span id, sampled) from a W3C traceparent, or None when absent or invalid."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return m.group(1), m.group(2), bool(int(m.group(3), 16) & 1)


class SpanExporter:
    """Queues finished spans and sends them in batches off the request path."""

    def __init__(self, config, loop):
        self.endpoint = config.endpoint
        self.service_name = config.service_name
        self.loop = loop
        self.queue: list[tuple] = []
        self.dropped = 0
        self.failing = False
        self.task = None

    def add(self, tracer, request: tuple) -> None:
        """A finished request's SpanTracer (its CLIENT spans) and what its SERVER span needs (server_span)."""
        if len(self.queue) >= MAX_QUEUED:
            self.dropped += 1 + len(tracer.attempts)
            return
        self.queue.append((tracer, request))
        if self.task is None:
            self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BATCH_EVERY)
            if not self.queue:
                continue
            finished, self.queue = self.queue, []
            batch = span_records(finished)
            try:
                # Encoding runs on the executor's thread, with the POST.
                await self.loop.run_in_executor(None, _export, self.endpoint, batch, self.service_name)
                if self.failing:
                    self.failing = False
                    log.warning("trace collector at %s answers again", self.endpoint)
            except Exception as e:  # noqa: BLE001 - a collector that is down loses spans, never requests
                self.dropped += len(batch)
                if not self.failing:
                    self.failing = True
                    log.warning("trace collector at %s failed (%s): spans are dropped until it answers",
                                self.endpoint, type(e).__name__)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _export(url: str, batch: list, service_name: str) -> None:
    body = encode(batch, service_name)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=EXPORT_TIMEOUT) as r:
        r.read()


class RequestFacts:
    """What a request's SERVER span is made of, kept from the exchange when it ends (not the
    exchange itself: kept until the batch leaves, its buffers would weigh on memory)."""

    __slots__ = ("method", "route", "path", "status", "client_ip", "host", "scheme", "consumer", "slots", "request_id",
                 "version", "grpc_status")

    def __init__(self, method, route, path, status, client_ip, host, scheme, consumer, slots, request_id,
                 version="1.1", grpc_status=-1):
        self.method = method
        self.route = route
        self.path = path
        self.status = status
        self.client_ip = client_ip
        self.host = host
        self.scheme = scheme
        self.consumer = consumer
        self.slots = slots
        self.request_id = request_id
        self.version = version            # "1.1", "1.0" or "2"
        self.grpc_status = grpc_status    # -1: not a gRPC call


class AttemptFacts:
    """One upstream attempt (a CLIENT span): its span id, target, number (1 = the first try),
    start and end (ns), status or failure, and what the request was."""

    __slots__ = ("span_id", "target", "number", "start", "end", "status", "failure", "method", "route", "path",
                 "params", "backend", "parent")

    def __init__(self, span_id, target, number, start, end, status, failure, method, route, path, params, backend,
                 parent=None):
        self.span_id = span_id
        self.target = target
        self.number = number
        self.start = start
        self.end = end
        self.status = status
        self.failure = failure
        self.method = method
        self.route = route
        self.path = path
        self.params = params
        self.backend = backend   # an aggregation backend's name, for a subrequest's attempt
        self.parent = parent     # its parent span: the SERVER span's, or a step's (None: the SERVER span)


class SpanRecord:
    """A span as `encode` takes it: ids (hex bytes), name, kind, start and end (ns), attributes,
    events ((time, name, attributes)) and whether it is an error."""

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "kind", "start", "end", "attributes", "events", "failed")

    def __init__(self, trace_id, span_id, parent_id, name, kind, start, end, attributes, events, failed):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start = start
        self.end = end
        self.attributes = attributes
        self.events = events
        self.failed = failed


def span_records(finished: list) -> list:
    """The spans of finished requests (SpanTracer.finished) as plain data for
    `encode`: each request's SERVER span and its CLIENT spans, named and with
    their attributes. Runs on the loop, once per batch."""
    spans = []
    for tracer, request in finished:
        trace_id, server_id = tracer.trace_id, tracer.span_id
        name, attributes, failed = server_span(request)
        events = [(when, policy.phase, {"tollhouse.policy": type(policy).__name__,
                                        "tollhouse.decision": Tracer.decision(result)})
                  for when, policy, result in tracer.events]
        spans.append(SpanRecord(trace_id, server_id, tracer.parent_id, name, SERVER, tracer.start, tracer.end,
                                attributes, events, failed))
        for span_id, name, attributes, start, end in tracer.steps:
            spans.append(SpanRecord(trace_id, span_id, server_id, name, INTERNAL, start, end, attributes, [], False))
        for attempt in tracer.attempts:
            name, attributes, failed = client_span(attempt)
            spans.append(SpanRecord(trace_id, attempt.span_id, attempt.parent or server_id, name, CLIENT, attempt.start,
                                    attempt.end, attributes, [], failed))
    return spans


def encode(spans: list, service_name: str) -> bytes:
    """An OTLP ExportTraceServiceRequest (protobuf) for `SpanRecord`s."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(_key_value("service.name", service_name))
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "tollhouse"
    add = scope.spans.add
    error = Status.STATUS_CODE_ERROR
    for record in spans:
        span = add(trace_id=bytes.fromhex(record.trace_id.decode()), span_id=bytes.fromhex(record.span_id.decode()),
                   name=record.name, kind=record.kind, start_time_unix_nano=record.start,
                   end_time_unix_nano=record.end)
        if record.parent_id:
            span.parent_span_id = bytes.fromhex(record.parent_id.decode())
        _set_attributes(span, record.attributes)
        for when, event_name, event_attributes in record.events:
            event = span.events.add(time_unix_nano=when, name=event_name)
            event.attributes.extend([_key_value(k, v) for k, v in event_attributes.items()])
        if record.failed:
            span.status.code = error
    return request.SerializeToString()


# A span's attributes, set the cheap way (a third of the cost of adding KeyValue
# messages): each (key, value) is serialized once by protobuf, as a Span holding
# only that attribute, and a span merges the joined pieces (serialized messages
# concatenated merge, and repeated fields append). Values unique to a request
# are added directly instead of filling the cache.
_PIECES: dict = {}
_UNIQUE = frozenset({"tollhouse.request_id"})   # string values


def _set_attributes(span, attributes: dict) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    pieces = []
    for key, value in attributes.items():
        if value is None:
            continue
        if key in _UNIQUE:   # strings
            span.attributes.add(key=key).value.string_value = value
            continue
        cache_key = (key, value.__class__, value)
        piece = _PIECES.get(cache_key)
        if piece is None:
            piece = Span(attributes=[_any_key_value(key, value)]).SerializeToString()
            if len(_PIECES) >= 8192:
                _PIECES.clear()   # bounded: paths and addresses can be many
            _PIECES[cache_key] = piece
        pieces.append(piece)
    span.MergeFromString(b"".join(pieces))


def server_span(request: RequestFacts) -> tuple[str, dict, bool]:
    """A request's SERVER span, from what SpanTracer.finished kept: its name,
    attributes and whether it is an error."""
    route, status = request.route, request.status
    template = None
    labels = {}
    if route is not None:
        template = route.path.decode() if route.path else (route.prefix.decode() or "") + "/*"
        labels = route.chain.named_outcomes(request.slots)
    method = request.method.decode("latin-1")
    host = request.host.decode("latin-1")
    server, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    attributes = {
        "http.request.method": method, "http.route": template, "url.path": request.path.decode("latin-1"),
        "http.response.status_code": status, "client.address": request.client_ip,
        "server.address": server or None, "server.port": int(port) if port.isdigit() else None,
        "url.scheme": request.scheme.decode(), "tollhouse.route": route.name if route is not None else None,
        "tollhouse.consumer": request.consumer, "tollhouse.cache.status": labels.get("cache"),
        "tollhouse.ratelimit.decision": labels.get("ratelimit"),
        "tollhouse.split.upstream": labels.get("split"),
        "tollhouse.request_id": request.request_id.decode("latin-1"),
        "network.protocol.version": request.version,
    }
    if route is not None and route.chain.logged:
        # The fields policies log per request, as tollhouse.* attributes (the WAF's rules and score).
        for key, value in route.chain.logged_values(request.slots).items():
            attributes["tollhouse." + key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    if request.grpc_status >= 0:
        attributes["rpc.system"] = "grpc"
        attributes["rpc.grpc.status_code"] = request.grpc_status
    return (f"{method} {template}" if template else method), attributes, status >= 500


def client_span(attempt: AttemptFacts) -> tuple[str, dict, bool]:
    """An upstream attempt's CLIENT span: its name, attributes and whether it is an error."""
    target, number, status, failure, backend = attempt.target, attempt.number, attempt.status, attempt.failure, \
        attempt.backend
    method = attempt.method.decode("latin-1")
    route, path = attempt.route, attempt.path
    if not route.path_kept:
        path = route.upstream_path(path, attempt.params)
    attributes = {"http.request.method": method, "server.address": target.host, "server.port": target.port,
                  "url.full": f"{target.url}{path.decode('latin-1')}",
                  "http.response.status_code": status if failure is None else None, "error.type": failure}
    if number > 1:
        attributes["http.request.resend_count"] = number - 1
    if backend is not None:
        attributes["tollhouse.backend"] = backend
    if target.region is not None:
        attributes["tollhouse.upstream.region"] = target.region   # the region that served (locality)
    return method, attributes, failure is not None or status >= 500


_KEY_VALUES: dict = {}   # (key, value) -> KeyValue, for events and the resource: they repeat


def _key_value(key: str, value):
    cache_key = (key, value.__class__, value)
    found = _KEY_VALUES.get(cache_key)
    if found is None:
        found = _any_key_value(key, value)
        if len(_KEY_VALUES) >= 8192:
            _KEY_VALUES.clear()
        _KEY_VALUES[cache_key] = found
    return found


def _any_key_value(key: str, value):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


INTERNAL, SERVER, CLIENT = 1, 2, 3   # Span.SpanKind values


def _now_ns() -> int:
    return time.time_ns()


_IDS: list = []   # span ids made ahead, in batches: a sampled request takes one


def _span_id() -> bytes:
    # Random, not secret: the generator's bits, without a system call per id.
    if not _IDS:
        _IDS.extend([b"%016x" % (getrandbits(64) or 1) for _ in range(512)])
    return _IDS.pop()


os.register_at_fork(after_in_child=_IDS.clear)   # a forked worker draws its own (random reseeds too)


class TracingFactory:
    """Decides per request whether it is sampled; a sampled one gets a SpanTracer.

    A ratio decision is one independent draw per request. Instead of a draw and
    a call for each, the number of requests until the next sampled one is drawn
    at once (geometric: the same distribution) and kept in the worker's
    `trace_skip`, which `Exchange.start` counts down without calling here; it
    calls when the count is out, or when a request carries a `traceparent` or
    a debug token, which need more than the ratio."""

    __slots__ = ("config", "exporter", "kind", "ratio", "log_unsampled", "gaps", "traceparent")

    def __init__(self, config, loop):
        self.config = config
        self.traceparent = noted_index(HEADER)   # where the exchange keeps the client's
        self.exporter = SpanExporter(config, loop)
        sampler = config.sampler
        self.kind = sampler.type
        self.ratio = sampler.ratio
        self.log_unsampled = math.log1p(-self.ratio) if 0.0 < self.ratio < 1.0 else None
        self.gaps: list = []   # the next gaps, drawn ahead

    def gap(self) -> int:
        """How many ratio decisions in a row say no before the next yes."""
        if self.ratio >= 1.0:
            return 0
        if self.ratio <= 0.0:
            return NEVER
        return min(NEVER, int(math.log(1.0 - random()) / self.log_unsampled))

    def first_skip(self) -> int:
        """The worker's `trace_skip` for this factory: ratio decisions are made ahead,
        always_off's all at once, always_on's never."""
        if self.kind == "always_off":
            return NEVER
        return self.gap() if self.kind in ("ratio", "parent_based") else 0

    def ratio_sampled(self, worker) -> bool:
        if worker.trace_skip > 0:
            worker.trace_skip -= 1
            return False
        gaps = self.gaps
        if not gaps:   # drawn in batches too: the draw's code and state stay out of the request path
            gaps.extend([self.gap() for _ in range(64)])
        worker.trace_skip = gaps.pop()
        return True

    def __call__(self, exchange):
        kind = self.kind
        if kind == "ratio":
            return SpanTracer(self.exporter, exchange, None) if self.ratio_sampled(exchange.worker) else None
        parent = parse_traceparent(exchange.noted_value(self.traceparent))
        if kind == "parent_based":
            sampled = parent[2] if parent is not None else self.ratio_sampled(exchange.worker)
        else:
            sampled = kind == "always_on"
        return SpanTracer(self.exporter, exchange, parent) if sampled else None

    def close(self) -> None:
        self.exporter.close()


class SpanTracer(Tracer):
    """Records one sampled request's spans. The request path keeps only raw facts
    (ids, times, the fields the SERVER span is made of, the attempts); names and
    attributes are built for the whole batch, where that code runs warm: done
    per request, 1 % of the time, it cost several times as much
    (docs/benchmarks.md, "Tenth session: tracing's sampled path")."""

    __slots__ = ("exporter", "trace_id", "span_id", "parent_id", "start", "end", "events", "attempts", "current",
                 "backend", "steps")

    def __init__(self, exporter, exchange, parent):
        self.exporter = exporter
        if parent is not None:
            self.trace_id, self.parent_id = parent[0], parent[1]
        else:
            self.trace_id, self.parent_id = _span_id() + _span_id(), None
        self.span_id = _span_id()
        self.start = _now_ns()
        self.events: list = []     # (time, policy, result)
        self.attempts: list = []   # finished CLIENT spans: see _close_attempt
        self.current = None        # (span id, target, attempt, start) of the attempt under way
        self.backend = None        # a subrequest's backend name (SubrequestTracer)
        self.steps: list = []      # finished INTERNAL spans: (span id, name, attributes, start, end)

    def policy_ended(self, exchange, policy, result) -> None:
        self.events.append((_now_ns(), policy, result))

    def attempt_started(self, exchange, target, attempt: int) -> None:
        span_id = _span_id()
        self.current = (span_id, target, attempt, _now_ns())
        # The upstream's parent is this CLIENT span (W3C trace context).
        exchange.headers = [line for line in exchange.headers if not line[:12].lower() == b"traceparent:"]
        exchange.headers.append(b"traceparent: 00-%s-%s-01\r\n" % (self.trace_id, span_id))

    def attempt_ended(self, exchange, target, status: int, failure: str | None) -> None:
        if failure is not None or status >= 500:
            self._close_attempt(exchange, status, failure)

    def _close_attempt(self, exchange, status: int, failure: str | None) -> None:
        current = self.current
        if current is None:
            return
        self.current = None
        span_id, target, attempt, start = current
        # Not the exchange itself: it refers to this tracer, and a cycle would wait for the collector.
        self.attempts.append(AttemptFacts(span_id, target, attempt, start, _now_ns(), status, failure, exchange.method,
                                          exchange.route, exchange.path, exchange.params, self.backend, self.span_id))

    def subrequest(self, name: str) -> Tracer:
        return SubrequestTracer(self, name)

    def step(self, name: str, attributes: dict | None = None) -> Tracer:
        return StepTracer(self, name, attributes)

    def finished(self, exchange) -> None:
        if self.current is not None:
            self._close_attempt(exchange, exchange.status, None)
        self.end = _now_ns()
        # What the SERVER span is made of, not the exchange: kept until the batch
        # leaves, a whole exchange (buffers, header lines) would weigh on memory.
        self.exporter.add(self, RequestFacts(exchange.method, exchange.route, exchange.path, exchange.status,
                                             exchange.client_ip, exchange.host, exchange.conn.scheme, exchange.consumer,
                                             exchange.slots, exchange.request_id, exchange.version,
                                             exchange.grpc_status))


class SubrequestTracer(SpanTracer):
    """A subrequest's CLIENT spans (an aggregation backend), children of the SERVER span
    of the request it serves and exported with it."""

    __slots__ = ()

    def __init__(self, parent: SpanTracer, backend: str):
        self.exporter = parent.exporter
        self.trace_id = parent.trace_id
        self.span_id = parent.span_id    # the parent of its CLIENT spans
        self.parent_id = None
        self.start = _now_ns()
        self.events = []
        self.attempts = parent.attempts   # exported when the parent's SERVER span ends
        self.current = None
        self.backend = backend
        self.steps = parent.steps

    def policy_ended(self, exchange, policy, result) -> None:
        pass

    def finished(self, exchange) -> None:
        if self.current is not None:
            self._close_attempt(exchange, exchange.status, None)


class StepTracer(Tracer):
    """An INTERNAL span within a traced request (a GraphQL plan step): the CLIENT spans
    of the subrequests made for it are its children."""

    __slots__ = ("request", "name", "attributes", "span_id", "start")

    def __init__(self, request: SpanTracer, name: str, attributes: dict | None):
        self.request = request
        self.name = name
        self.attributes = attributes or {}
        self.span_id = _span_id()
        self.start = _now_ns()

    def subrequest(self, name: str) -> Tracer:
        tracer = SubrequestTracer(self.request, name)
        tracer.span_id = self.span_id   # the parent of its CLIENT spans
        return tracer

    def end(self) -> None:
        self.request.steps.append((self.span_id, self.name, self.attributes, self.start, _now_ns()))


class Tracers(Tracer):
    """Several tracers for one request (tracing and the debug header together)."""

    __slots__ = ("tracers",)

    def __init__(self, tracers):
        self.tracers = tracers

    def policy_started(self, exchange, policy):
        for t in self.tracers:
            t.policy_started(exchange, policy)

    def policy_ended(self, exchange, policy, result):
        for t in self.tracers:
            t.policy_ended(exchange, policy, result)

    def attempt_started(self, exchange, target, attempt):
        for t in self.tracers:
            t.attempt_started(exchange, target, attempt)

    def attempt_ended(self, exchange, target, status, failure):
        for t in self.tracers:
            t.attempt_ended(exchange, target, status, failure)

    def responding(self, exchange):
        for t in self.tracers:
            t.responding(exchange)

    def finished(self, exchange):
        for t in self.tracers:
            t.finished(exchange)

    def subrequest(self, name):
        found = [t for t in (t.subrequest(name) for t in self.tracers) if t is not None]
        return None if not found else found[0] if len(found) == 1 else Tracers(found)

    def step(self, name, attributes=None):
        for t in self.tracers:
            found = t.step(name, attributes)
            if found is not None:
                return found   # only tracing keeps steps
        return None


def combine(*factories):
    """One tracer factory from several (None ones skipped): a request gets every tracer that applies."""
    found = [f for f in factories if f is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]

    def factory(exchange):
        tracers = [t for t in (f(exchange) for f in found) if t is not None]
        if not tracers:
            return None
        return tracers[0] if len(tracers) == 1 else Tracers(tracers)

    return factory


#: The top-level `tracing:` section (installed by tollhouse.builtins); the client's traceparent
#: is noted for the sampler (and relayed).
SECTION = Section("tracing", Field(Tracing, None, "OpenTelemetry traces: {endpoint, service_name, sampler: "
                                                  "{type, ratio}}; absent = no spans (traceparent still passed on)"),
                  headers=(NotedHeader(HEADER),))
