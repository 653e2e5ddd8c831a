"""Traffic splitting (route `split`, `sticky`; docs/releases.md): a route's requests shared
between upstreams by weight, as a way of choosing the upstream (the route's chooser,
routing.RouteTarget.choose_pool), so every other policy of the route works unchanged.

- Each side is an upstream with its own pool, health checks and breaker.
- `force` sends a request carrying a header (or cookie) value to its side, whatever
  the weights: canary testers, internal traffic.
- `sticky` keeps a caller on one side while the weights stay the same: by consumer
  (anonymous callers by address), by client address, or by a cookie the gateway sets
  (`tollhouse-split-<route>`, naming the side).
- A side whose targets are all unhealthy gets no traffic while another side is healthy.
- `tollhouse_split_requests_total{route,upstream}` counts each side's requests.
"""
from __future__ import annotations

import hashlib
from random import random

from ..config.loader import ConfigError
from ..config.schema import Field, Int, ListOf, Schema, Str, error_at
from ..exchange.request import cookie_value
from ..pipeline import Policy
from ..registry import PolicyKind

COOKIE_PREFIX = "tollhouse-split-"


class Force(Schema):
    header = Field(Str(pattern=r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"), "", "a request header that sends the request here")
    cookie = Field(Str(pattern=r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"), "", "or a cookie that does")
    value = Field(Str(), doc="the value the header or cookie must have")

    def check(self, path, lines, line, errors):
        if bool(self.header) == bool(self.cookie):
            error_at(errors, path, "header", lines, line, "give one of header or cookie")


class Side(Schema):
    upstream = Field(Str(), doc="an upstream in `upstreams`")
    weight = Field(Int(min=0, max=10000), doc="its share, relative to the other sides' (0: none)")
    force = Field(Force, None, "{header | cookie, value}: requests that carry it go to this side")


def check_route(route, where: str, config, errors: list) -> None:
    """`split` replaces `upstream`; its sides name upstreams, and one has weight; `sticky`
    needs `split`."""
    if route.split is None:
        if route.sticky:
            errors.append(ConfigError(f"{where}.sticky", None, "needs split"))
        return
    if route.upstream:
        errors.append(ConfigError(f"{where}.upstream", None, "a route with split names its upstreams in split"))
    if not route.split:
        errors.append(ConfigError(f"{where}.split", None, "needs at least one side"))
        return
    seen = set()
    for i, side in enumerate(route.split):
        if side.upstream not in config.upstreams:
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None,
                                      f"no upstream named {side.upstream!r} in upstreams"))
        elif config.upstreams[side.upstream].protocol != "http1":
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None, "a split side must be an HTTP upstream"))
        if side.upstream in seen:
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None, f"{side.upstream!r} is a side already"))
        seen.add(side.upstream)
    if not any(side.weight for side in route.split):
        errors.append(ConfigError(f"{where}.split", None, "no side has weight"))


class SplitChooser:
    """Chooses each request's upstream pool among a route's sides (see the module doc)."""

    __slots__ = ("pools", "weights", "forced", "sticky", "cookie", "counters", "keys")

    def __init__(self, sides, pools: dict, sticky: str, route_name: str, stats):
        self.pools = [pools[s.upstream] for s in sides]
        self.weights = [s.weight for s in sides]
        # (index, is a cookie, name, value) of the sides a request can be sent to by what it carries.
        self.forced = [(i, bool(s.force.cookie), s.force.cookie or s.force.header, s.force.value)
                       for i, s in enumerate(sides) if s.force is not None]
        self.sticky = sticky
        self.cookie = COOKIE_PREFIX + route_name
        self.counters = stats.counters
        self.keys = [("split_requests", (("route", route_name), ("upstream", s.upstream))) for s in sides]
        for key in self.keys:
            stats.declare(*key)

    def choose(self, exchange):
        i = self._side(exchange)
        key = self.keys[i]
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.pools[i]

    def _side(self, exchange) -> int:
        for i, is_cookie, name, value in self.forced:
            sent = cookie_value(exchange, name) if is_cookie else exchange.header(name)
            if sent == value:
                return i
        weights = self._usable_weights()
        sticky = self.sticky
        if sticky == "cookie":
            named = cookie_value(exchange, self.cookie)
            if named is not None:
                for i, pool in enumerate(self.pools):
                    if pool.name == named and weights[i]:
                        return i
        total = sum(weights)
        if sticky == "consumer" or sticky == "ip":
            caller = exchange.consumer if sticky == "consumer" else None
            key = (caller or exchange.client_ip).encode()
            point = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % total
        else:
            point = random() * total
        for i, weight in enumerate(weights):
            if point < weight:
                return i
            point -= weight
        return len(weights) - 1

    def _usable_weights(self) -> list:
        """The weights, with the sides that have no healthy target left out (while another has one)."""
        weights = self.weights
        healthy = [w if w and _healthy(pool) else 0 for w, pool in zip(weights, self.pools)]
        return healthy if any(healthy) else weights


def _healthy(pool) -> bool:
    return any(t.healthy for t in pool.targets)


class StickyCookie(Policy):
    """Sets the sticky cookie on a split route's responses when the request came without
    one naming the side that served it."""

    phase = "transform"

    def __init__(self, config, context, *, cookie: str):
        super().__init__(config, context)
        self.cookie = cookie

    def on_response(self, exchange):
        pool = exchange.pool
        if pool is not None and cookie_value(exchange, self.cookie) != pool.name:
            exchange.response_headers.append(
                b"set-cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (self.cookie.encode(), pool.name.encode()))


def _chooser(sides, context, services, pools):
    route = context.route
    return SplitChooser(sides, pools, route.sticky, context.route_name, context.stats)


def _build(sides, context, services):
    if sides is None or context.route is None or context.route.sticky != "cookie":
        return None
    return StickyCookie(None, context, cookie=COOKIE_PREFIX + context.route_name)


KIND = PolicyKind("split", phase="transform", key="split", build=_build, chooser=_chooser, check=check_route,
                  own_upstream=False,
                  field=Field(ListOf(Side), None, "instead of `upstream`: [{upstream, weight, force: {header | "
                                                  "cookie, value}}]: requests shared by weight; see docs/releases.md"))

STICKY = PolicyKind("sticky", phase="transform", key="sticky", build=lambda config, context, services: None,
                    field=Field(Str(choices=("consumer", "ip", "cookie")), "",
                                "with split: keep a caller on one side (consumer, ip, or a cookie the gateway sets)"))
