"""The rate-limit policy: a route's limits, checked per request (see __init__).

Compiled with Cython (policy.pxd): `RateLimitPolicy` and `_Limit` are
extension types there, so the per-request hooks run as C.
"""
from __future__ import annotations

import hashlib
import math
from time import time as _now

from ...pipeline import Policy, Reply
from .algorithms import ALGORITHMS, evaluate
from .limiter import MemoryLimiter, RedisLimiter, StoreDown, decide
from .schema import RateLimit


_STORE_KEYS_KEPT = 10000   # per limit: the clients seen lately


class _Limit:
    """A limit compiled for the request path."""

    __slots__ = ("spec", "algo", "limit", "window", "script_args", "burst", "spec_id", "store_prefix", "key_kind",
                 "header", "name", "policy_item", "table", "local_table", "partition_args", "scope", "store_keys",
                 "cost")

    def __init__(self, cfg: RateLimit, spec_id: str, limiter):
        burst = cfg.burst or cfg.limit
        self.algo, self.limit, self.window, self.burst = ALGORITHMS[cfg.algorithm], cfg.limit, cfg.window, burst
        self.spec = (self.algo, self.limit, self.window, burst)
        # Pre-encoded for the Redis script (the client would encode them per call).
        # The last is the request's cost: 1, replaced per request for a weighted limit.
        self.script_args = tuple(b"%d" % v for v in (self.algo, self.limit, int(cfg.window * 1000), burst, 1))
        self.cost = cfg.cost if cfg.cost != "request" else None   # the exchange variable that weighs a request
        self.scope = cfg.scope
        self.partition_args = None
        regions = getattr(limiter, "regions", None)
        if cfg.scope == "global" and regions is not None:
            # Counted with the other regions' components (ratelimit.lua: +10), and while
            # partitioned with on_partition: share, capped at this region's share (+20).
            window_ms = int(cfg.window * 1000)
            self.script_args = (b"%d" % (self.algo + 10), b"%d" % self.limit, b"%d" % window_ms, b"0", b"1")
            if cfg.mode == "escrow":
                # Admitted within this region's share, plus what it borrowed (ratelimit.lua: +30).
                self.scope = "escrow"
                self.script_args = (b"%d" % (self.algo + 30), b"%d" % self.limit, b"%d" % window_ms,
                                    b"%d" % regions.share_of(self.limit, regions.name), b"1")
            elif regions.share:
                self.partition_args = (b"%d" % (self.algo + 20), b"%d" % self.limit, b"%d" % window_ms,
                                       b"%d" % regions.count, b"1")
        if cfg.key == "global":
            # One counter for every route declaring the same global limit.
            spec_id = f"global:{cfg.algorithm}:{cfg.limit}:{cfg.window:g}:{burst}"
        self.spec_id = spec_id
        self.store_prefix = ""
        self.key_kind = cfg.key.split(":", 1)[0]
        self.header = cfg.key.split(":", 1)[1] if ":" in cfg.key else None
        self.name = f"{cfg.key.replace(':', '-').lower()}-{cfg.window:g}s" + (f"-{cfg.cost}" if self.cost else "")
        self.policy_item = f'"{self.name}";q={cfg.limit};w={max(1, math.ceil(cfg.window))}'
        # Memory tables are resolved once here, not looked up per request.
        self.table = limiter.table(spec_id, self.spec) if isinstance(limiter, MemoryLimiter) else None
        self.local_table = limiter.local.table(spec_id, self.spec) if isinstance(limiter, RedisLimiter) else None
        # Redis: a counter key's ([store key], [key]) for the limiter, built once per key seen.
        self.store_keys: dict = {}

    def for_store(self, key: str) -> tuple:
        """([store key as bytes], [key]): what RedisLimiter.check takes for this limit alone."""
        found = self.store_keys.get(key)
        if found is None:
            if len(self.store_keys) >= _STORE_KEYS_KEPT:
                self.store_keys.clear()   # many distinct clients: start over rather than grow
            found = self.store_keys[key] = ([(self.store_prefix + key).encode()], [key])
        return found


def _key(lim: _Limit, exchange) -> str:
    """The counter key of `lim` for this request."""
    kind = lim.key_kind
    if kind == "ip":
        return "ip:" + exchange.client_ip
    if kind == "consumer":
        identity = exchange.identity
        return "c:" + identity.consumer if identity is not None else "ip:" + exchange.client_ip
    if kind == "route" or kind == "global":
        return kind
    if kind == "header":
        value = exchange.header(lim.header)
        return "h:" + _short(value) if value else "ip:" + exchange.client_ip
    # A value an earlier policy put on the exchange (registry.PolicyKind.request_values):
    # the GraphQL operation's name. Requests without it share one counter.
    found = exchange.vars.get(kind) if exchange.vars is not None else None
    return "v:" + _short(str(found)) if found is not None else "v:"


def _costs(limits, exchange):
    """Each limit's weight for this request, or None when every one counts 1 (the common case)."""
    if not any(lim.cost is not None for lim in limits):
        return None
    found = exchange.vars or {}
    return tuple(max(1, int(found.get(lim.cost, 1))) if lim.cost is not None else 1 for lim in limits)


def _policy_items(limits) -> str:
    # Outside the methods: the compiled build allows no closure (this generator) in them.
    return ", ".join(x.policy_item for x in limits)


def _short(value: str) -> str:
    return value if len(value) <= 64 else hashlib.sha1(value.encode()).hexdigest()


class RateLimitPolicy(Policy):
    __slots__ = ("limiter", "route", "memory", "fixed", "tiered", "tiers", "prefix", "policy_header", "single",
                 "consumer_limits")

    phase = "ratelimit"
    outcome = "ratelimit"
    outcome_metric = "ratelimit_decisions"

    def __init__(self, config, context, *, tiers, limiter, route_name: str):
        super().__init__(config, context)
        self.limiter = limiter
        self.route = route_name
        stats = context.stats
        stats.declare_outcomes(route_name, self.outcome_metric, ("allowed", "rejected"))   # at 0 from the start
        # Rejections have a counter of their own as well (docs/contract.md §4).
        stats.derive(self.outcome_metric, "rejected", "ratelimit_rejections")
        self.memory = isinstance(limiter, MemoryLimiter)
        self.fixed = [_Limit(c, f"{route_name}:{i}", limiter) for i, c in enumerate(config) if not c.tiered]
        self.tiered = any(c.tiered for c in config)
        self.tiers = {name: [_Limit(c, f"{route_name}:t:{name}:{j}", limiter) for j, c in enumerate(tier.rate_limits)]
                      for name, tier in tiers.items()}
        uses_global = any(lim.key_kind == "global" for lim in self.fixed) or any(
            lim.key_kind == "global" for limits in self.tiers.values() for lim in limits)
        # All keys of one request share a Redis Cluster hash slot, so one script
        # sees them all: the route's slot, or the shared one if a global key is used.
        tag = "global" if uses_global else route_name
        self.prefix = f"th:rl:v1:{{{tag}}}:"
        for lim in self.fixed + [x for limits in self.tiers.values() for x in limits]:
            lim.store_prefix = f"{self.prefix}{lim.spec_id}:"
            if lim.scope == "global" and getattr(limiter, "regions", None) is not None:
                limiter.regions.watch(self.prefix, lim.store_prefix, f"{route_name}:{lim.name}")
            elif lim.scope == "escrow":
                limiter.regions.watch_escrow(self.prefix, lim.store_prefix, f"{route_name}:{lim.name}", lim.limit,
                                             lim.window)
        self.policy_header = None if self.tiered else _policy_items(self.fixed)
        # The common case, one limit counting 1 per request, skips the lists of the general path.
        self.single = self.fixed[0] if not self.tiered and len(self.fixed) == 1 and self.fixed[0].cost is None \
            else None
        self.consumer_limits = {}   # Identity.limits_key -> that consumer's own limits, compiled here

    def _own_limits(self, identity):
        """A consumer's own limits (they replace the route's for it), compiled once per set."""
        limits = self.consumer_limits.get(identity.limits_key)
        if limits is None:
            if len(self.consumer_limits) >= _STORE_KEYS_KEPT:
                self.consumer_limits.clear()
            limits = [_Limit(c, f"{self.route}:c:{identity.consumer}:{c.key}:{c.algorithm}:{c.limit}:{c.window:g}:"
                                f"{c.burst}", self.limiter) for c in identity.rate_limits]
            for lim in limits:
                lim.store_prefix = f"{self.prefix}{lim.spec_id}:"
            self.consumer_limits[identity.limits_key] = limits
        return limits

    def _limits(self, exchange):
        identity = exchange.identity
        if identity is not None and identity.rate_limits is not None:
            return self._own_limits(identity)
        if not self.tiered:
            return self.fixed
        tier = (identity.tier if identity is not None else None) or "default"
        return self.fixed + self.tiers.get(tier, [])

    def on_request(self, exchange):
        lim = self.single
        if lim is not None and (exchange.identity is None or exchange.identity.rate_limits is None):
            # The socket peer's key without the general lookup: the common case
            # (an ip key, or a consumer key of an anonymous caller).
            kind = lim.key_kind
            key = ("ip:" + exchange.conn.peer_ip if exchange.xff is None and (
                       kind == "ip" or (kind == "consumer" and exchange.identity is None))
                   else _key(lim, exchange))
            if not self.memory:
                store_key, keys = lim.for_store(key)
                return self.limiter.check(self.fixed, store_key, self, exchange, keys)
            now = _now()
            table = lim.table
            ok, remaining, reset, retry, state = evaluate(lim.algo, lim.limit, lim.window, lim.burst,
                                                          table.get(key, now), now)
            if ok:
                table.current[key] = state
                self.admit(exchange, lim, (True, lim.limit, remaining, reset, 0.0), "allowed")
                return None
            return self._decide(exchange, self.fixed, False, [(False, lim.limit, remaining, reset, retry)], "allowed")
        limits = self._limits(exchange)
        if not limits:
            return None
        keys = [_key(lim, exchange) for lim in limits]
        costs = _costs(limits, exchange)
        if self.memory:
            allowed, decisions = decide(limits, [lim.table for lim in limits], keys, _now(), 1, costs)
            return self._decide(exchange, limits, allowed, decisions, "allowed")
        return self.limiter.check(limits, [(lim.store_prefix + k).encode() for lim, k in zip(limits, keys)],
                                  self, exchange, keys, costs)

    def resolved(self, exchange, limits, keys, result, costs=None):
        """Turn the store's answer (or StoreDown) into None or a Reply."""
        if not isinstance(result, StoreDown):
            allowed, decisions = result
            return self._decide(exchange, limits, allowed, decisions, "allowed")
        mode = self.limiter.failure_mode
        if mode == "open":
            exchange.remember(self.slot, "store_down_open")
            return None
        if mode == "closed":
            exchange.remember(self.slot, "store_down_closed")
            return Reply.problem(503, "Service Unavailable", "the rate-limit store is unavailable",
                                 headers=[("retry-after", "1")])
        allowed, decisions = decide(limits, [lim.local_table for lim in limits], keys, _now(),
                                    self.limiter.live_instances, costs)
        return self._decide(exchange, limits, allowed, decisions, "store_down_local")

    def admit(self, exchange, lim: _Limit, decision: tuple, result: str) -> None:
        """An admitted request: `decision` (of its tightest limit `lim`) for the headers.

        What the policy remembers is (result, decision, limit, policy header):
        on_response turns it into headers, and its result is the outcome that
        metrics count (Stats.fold) and the access log shows (outcome_of)."""
        exchange.remember(self.slot, (result, decision, lim, self.policy_header))

    def _decide(self, exchange, limits, allowed, decisions, result):
        # decisions: (ok, limit, remaining, reset, retry) per limit
        if allowed:
            best = 0
            for i in range(1, len(decisions)):
                if decisions[i][2] < decisions[best][2]:
                    best = i
            if limits is self.fixed:
                self.admit(exchange, limits[best], decisions[best], result)
            else:   # a tier's or a consumer's own: the policy header is made in on_response
                exchange.remember(self.slot, (result, decisions[best], limits[best], None))
            return None
        best = -1
        for i, d in enumerate(decisions):
            if not d[0] and (best < 0 or d[4] > decisions[best][4]):
                best = i
        d = decisions[best]
        exchange.remember(self.slot, ("rejected", d, limits[best], self.policy_header if limits is self.fixed else None))
        retry = max(1, math.ceil(d[4]))
        return Reply.problem(429, "Too Many Requests", f"rate limit {limits[best].name} exceeded; retry in {retry}s",
                             headers=[("retry-after", str(retry))])

    def outcome_of(self, value):
        return value[0] if value.__class__ is tuple else value

    def on_response(self, exchange):
        state = exchange.recall(self.slot)
        if state.__class__ is not tuple:
            return
        d = state[1]
        lim = state[2]
        policy = state[3]
        if policy is None:
            policy = _policy_items(self._limits(exchange))
        limit = d[1]
        remaining = d[2]
        reset_at = d[3]
        reset = int(reset_at)
        if reset < reset_at:
            reset += 1   # the ceiling, in C arithmetic when compiled (math.ceil would be a Python call)
        if reset < 0:
            reset = 0
        # One entry holding five header lines: this runs on every limited response. An
        # f-string of C integers then encode() is the cheapest form compiled.
        exchange.response_headers.append((
            f'ratelimit-limit: {limit}\r\nratelimit-remaining: {remaining}\r\nratelimit-reset: {reset}\r\n'
            f'ratelimit-policy: {policy}\r\nratelimit: "{lim.name}";r={remaining};t={reset}\r\n').encode())
