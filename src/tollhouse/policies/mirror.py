"""Request mirroring (route `mirror`; docs/releases.md): a copy of `percent` of a route's
requests, body included, goes to another upstream, marked `X-Tollhouse-Mirror: 1`; its
answers are discarded.

A mirror never delays or fails the caller: the copy is a subrequest nobody waits for,
sent once the request's body is whole (a copy of the body is kept only for the
requests chosen), through the mirror upstream's own pool, timeouts and breaker. At most
`max_in_flight` copies per worker are out at once; past that a copy is dropped and
counted in `tollhouse_mirror_dropped_total{route}`. `tollhouse_mirror_requests_total{route}`
counts the copies sent.
"""
from __future__ import annotations

import logging
from random import random

from ..config.loader import ConfigError
from ..config.schema import Field, Float, Int, Schema, Str
from ..exchange.subrequest import start_subrequest
from ..pipeline import Policy
from ..registry import PolicyKind

log = logging.getLogger("tollhouse.mirror")

MARK = b"x-tollhouse-mirror: 1\r\n"


class Mirror(Schema):
    upstream = Field(Str(), doc="the upstream that gets the copies (its answers are discarded)")
    percent = Field(Float(min=0.0, max=100.0), doc="the percentage of requests copied (5: one in twenty)")
    max_in_flight = Field(Int(min=1), 100, "copies out at once per worker; more are dropped (and counted)")


def check_route(route, where: str, config, errors: list) -> None:
    if route.mirror is not None and route.mirror.upstream not in config.upstreams:
        errors.append(ConfigError(f"{where}.mirror.upstream", None,
                                  f"no upstream named {route.mirror.upstream!r} in upstreams"))


class _Copy:
    """Keeps the request body of a mirrored request (a body reader), then sends the copy."""

    __slots__ = ("policy", "chunks")

    def __init__(self, policy):
        self.policy = policy
        self.chunks = []

    def feed(self, exchange, chunk):
        self.chunks.append(chunk)
        return None

    def end(self, exchange):
        self.policy.send(exchange, b"".join(self.chunks))
        return None


class MirrorPolicy(Policy):
    phase = "transform"   # after every policy that may refuse or change the request

    def __init__(self, config: Mirror, context):
        super().__init__(config, context)
        self.in_flight = 0
        self.share = config.percent / 100
        stats = context.stats
        self.sent_key = ("mirror_requests", (("route", context.route_name),))
        self.dropped_key = ("mirror_dropped", (("route", context.route_name),))
        stats.declare(*self.sent_key)
        stats.declare(*self.dropped_key)
        self.counters = stats.counters

    def on_request(self, exchange):
        if random() >= self.share:
            return None
        if exchange.body_done and not exchange.body_received:
            self.send(exchange, b"")
            return None
        return exchange.add_body_reader(_Copy(self))

    def send(self, exchange, body: bytes) -> None:
        counters = self.counters
        if self.in_flight >= self.config.max_in_flight:
            counters[self.dropped_key] = counters.get(self.dropped_key, 0) + 1
            return
        try:
            copy = start_subrequest(exchange.worker, self.config.upstream, exchange.method,
                                    exchange.path + exchange.query, headers=[*exchange.headers, MARK], body=body,
                                    parent=exchange)
        except KeyError:   # the upstream left in a reload while this request was under way
            counters[self.dropped_key] = counters.get(self.dropped_key, 0) + 1
            return
        self.in_flight += 1
        counters[self.sent_key] = counters.get(self.sent_key, 0) + 1
        copy.conn.done.add_done_callback(self._returned)

    def _returned(self, done) -> None:
        self.in_flight -= 1


KIND = PolicyKind("mirror", phase=MirrorPolicy.phase, key="mirror", check=check_route,
                  build=lambda config, context, services: MirrorPolicy(config, context) if config is not None else None,
                  field=Field(Mirror, None, "{upstream, percent, max_in_flight}: copies of requests to another "
                                            "upstream, answers discarded; see docs/releases.md"))
