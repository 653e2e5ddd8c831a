"""The debug header (docs/operations.md, "Debugging a request").

A request carrying `X-Tollhouse-Debug: <debug.token>` is answered with
`Server-Timing` (time spent per policy phase, and upstream: the wait for the
response head) and `X-Tollhouse-Explain` (route, each policy's decision, the
targets tried). The header is never relayed upstream, whoever sends it; with
a wrong token, or no `debug.token` configured, it is ignored. It is a
`pipeline.Tracer`, so requests without it cost one field check.
"""
from __future__ import annotations

import hmac
from time import perf_counter

from ..config.schema import Field, Schema, Str
from ..pipeline import Tracer
from ..registry import NotedHeader, Section, noted_index

HEADER = "x-tollhouse-debug"   # read by the gateway, never relayed


class Debug(Schema):
    token = Field(Str(), "", "requests with X-Tollhouse-Debug: <token> get Server-Timing and X-Tollhouse-Explain; "
                  "empty = off")


def debug_tracer_factory(config):
    """The worker's tracer factory for `debug` (None when no token is configured)."""
    if config is None or not config.token:
        return None
    token = config.token.encode()
    index = noted_index(HEADER)

    def factory(exchange):
        sent = exchange.noted_value(index)
        if sent is not None and hmac.compare_digest(sent, token):
            return DebugTracer()
        return None

    return factory


class DebugTracer(Tracer):
    """Collects one request's timings and decisions for the debug headers."""

    __slots__ = ("phases", "decisions", "attempts", "started")

    def __init__(self):
        self.phases: dict[str, float] = {}   # phase -> seconds
        self.decisions: list[str] = []
        self.attempts: list[str] = []
        self.started = 0.0

    def policy_started(self, exchange, policy) -> None:
        self.started = perf_counter()

    def policy_ended(self, exchange, policy, result) -> None:
        phase = policy.phase
        self.phases[phase] = self.phases.get(phase, 0.0) + perf_counter() - self.started
        self.decisions.append(f"{type(policy).__name__}={self.decision(result)}")

    def attempt_ended(self, exchange, target, status: int, failure: str | None) -> None:
        self.attempts.append(f"{target.url}={failure or status}")

    def responding(self, exchange) -> None:
        timings = [f"{phase};dur={seconds * 1000:.3f}" for phase, seconds in self.phases.items()]
        if exchange.upstream_time:
            timings.append(f"upstream;dur={exchange.upstream_time * 1000:.3f}")
        route = exchange.route
        explain = [f"route={route.name if route is not None else '-'}"]
        explain += self.decisions
        explain += [f"{name}={label}" for name, label in exchange.named_outcomes().items()]
        if route is not None and route.chain.logged:
            # The fields policies log per request (the WAF's matched rules and score).
            explain += [f"{name}={_shown(value)}" for name, value in route.chain.logged_values(exchange.slots).items()]
        if self.attempts:
            explain.append("targets=" + ",".join(self.attempts))
        lines = exchange.response_headers
        if timings:
            lines.append(("server-timing: " + ", ".join(timings) + "\r\n").encode("latin-1"))
        lines.append(("x-tollhouse-explain: " + "; ".join(explain) + "\r\n").encode("latin-1", "replace"))


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


#: The top-level `debug:` section (installed by tollhouse.builtins).
SECTION = Section("debug", Field(Debug, None, "{token}: X-Tollhouse-Debug: <token> -> Server-Timing and "
                                              "X-Tollhouse-Explain"),
                  headers=(NotedHeader(HEADER, relayed=False),))
