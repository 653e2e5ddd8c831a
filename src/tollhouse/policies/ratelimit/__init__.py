"""Rate limiting (PRODUCT.md §2 `rate_limits`, `tiers`, `store_failure`; §3 headers).

One `RateLimitPolicy` per route that declares limits. All of a request's
limits are checked together, in one atomic step (one script call with
Redis), and a rejected request is counted in none of them.
"""
from __future__ import annotations

import hashlib
import math

from ...pipeline import Policy, Reply
from .algorithms import ALGORITHMS
from .limiter import MemoryLimiter, RedisLimiter, StoreDown
from .schema import RateLimit, Tier

__all__ = ["RateLimit", "Tier", "RateLimitPolicy", "make_limiter"]

class _Limit:
    """A limit compiled for the request path."""

    __slots__ = ("spec", "spec_id", "key_kind", "header", "name", "policy_item")

    def __init__(self, cfg: RateLimit, spec_id: str):
        burst = cfg.burst or cfg.limit
        self.spec = (ALGORITHMS[cfg.algorithm], cfg.limit, cfg.window, burst)
        self.spec_id = spec_id
        self.key_kind = cfg.key.split(":", 1)[0]
        self.header = cfg.key.split(":", 1)[1] if ":" in cfg.key else None
        window = f"{cfg.window:g}"
        self.name = f"{cfg.key.replace(':', '-').lower()}-{window}s"
        self.policy_item = f'"{self.name}";q={cfg.limit};w={max(1, math.ceil(cfg.window))}'


def _short(value: str) -> str:
    return value if len(value) <= 64 else hashlib.sha1(value.encode()).hexdigest()


class RateLimitPolicy(Policy):
    phase = "ratelimit"

    def __init__(self, config, context, *, tiers, limiter, route_name: str):
        super().__init__(config, context)
        self.limiter = limiter
        self.route = route_name
        self.memory = isinstance(limiter, MemoryLimiter)
        self.fixed = [_Limit(c, f"{route_name}:{i}") for i, c in enumerate(config) if not c.tiered]
        self.tiered = any(c.tiered for c in config)
        self.tiers = {name: [_Limit(c, f"{route_name}:t:{name}:{j}") for j, c in enumerate(tier.rate_limits)]
                      for name, tier in tiers.items()}
        uses_global = any(lim.key_kind == "global" for lim in self.fixed) or any(
            lim.key_kind == "global" for limits in self.tiers.values() for lim in limits)
        # All keys of one request share a Redis Cluster hash slot, so one script
        # sees them all: the route's slot, or the shared one if a global key is used.
        tag = "global" if uses_global else route_name
        self.prefix = f"th:rl:v1:{{{tag}}}:"
        stats = context.stats
        route_label = (("route", route_name),)
        self.labels = {r: (("route", route_name), ("result", r)) for r in
                       ("allowed", "rejected", "store_down_open", "store_down_closed", "store_down_local")}
        self.rejections = route_label
        self.stats = stats
        self.policy_header = None if self.tiered else ", ".join(lim.policy_item for lim in self.fixed).encode()

    def _limits(self, exchange):
        if not self.tiered:
            return self.fixed
        tier = exchange.tier or "default"
        return self.fixed + self.tiers.get(tier, [])

    def _key(self, lim: _Limit, exchange) -> str:
        kind = lim.key_kind
        if kind == "ip":
            return "ip:" + exchange.client_ip
        if kind == "consumer":
            return "c:" + exchange.consumer if exchange.consumer else "ip:" + exchange.client_ip
        if kind == "route" or kind == "global":
            return kind
        value = exchange.header(lim.header)
        return "h:" + _short(value) if value else "ip:" + exchange.client_ip

    def on_request(self, exchange):
        limits = self._limits(exchange)
        if not limits:
            return None
        keys = [self._key(lim, exchange) for lim in limits]
        if self.memory:
            allowed, decisions = self.limiter.check([lim.spec for lim in limits], [lim.spec_id for lim in limits], keys)
            return self._decide(exchange, limits, allowed, decisions, "allowed")
        store_keys = [f"{self.prefix}{lim.spec_id}:{k}" for lim, k in zip(limits, keys)]
        return self.limiter.check([lim.spec for lim in limits], store_keys,
                                  lambda result: self._resolved(exchange, limits, keys, result))

    def _resolved(self, exchange, limits, keys, result):
        """Turn the store's answer (or StoreDown) into None or a Reply."""
        if not isinstance(result, StoreDown):
            allowed, decisions = result
            return self._decide(exchange, limits, allowed, decisions, "allowed")
        mode = self.limiter.failure_mode
        if mode == "open":
            self.stats.inc("ratelimit_decisions", self.labels["store_down_open"])
            exchange.ratelimit = "store_down_open"
            return None
        if mode == "closed":
            self.stats.inc("ratelimit_decisions", self.labels["store_down_closed"])
            exchange.ratelimit = "store_down_closed"
            return Reply.problem(503, "Service Unavailable", "the rate-limit store is unavailable",
                                 headers=[("retry-after", "1")])
        allowed, decisions = self.limiter.local.check([lim.spec for lim in limits], [lim.spec_id for lim in limits],
                                                      keys, divisor=self.limiter.live_instances)
        return self._decide(exchange, limits, allowed, decisions, "store_down_local")

    def _decide(self, exchange, limits, allowed, decisions, result):
        tightest = min(decisions, key=lambda d: (d.remaining, -d.reset)) if allowed else \
            max((d for d in decisions if not d.allowed), key=lambda d: d.retry_after)
        index = decisions.index(tightest)
        exchange.ratelimit = (result if allowed else "rejected", tightest, limits[index],
                              self.policy_header or ", ".join(lim.policy_item for lim in limits).encode())
        if allowed:
            self.stats.inc("ratelimit_decisions", self.labels[result])
            return None
        self.stats.inc("ratelimit_decisions", self.labels["rejected"])
        self.stats.inc("ratelimit_rejections", self.rejections)
        retry = max(1, math.ceil(tightest.retry_after))
        return Reply.problem(429, "Too Many Requests",
                             f"rate limit {limits[index].name} exceeded; retry in {retry}s",
                             headers=[("retry-after", str(retry))])

    def on_response(self, exchange):
        state = exchange.ratelimit
        if not isinstance(state, tuple):
            return
        _, d, lim, policy = state
        reset = max(0, math.ceil(d.reset))
        exchange.response_headers += (
            b"ratelimit-limit: %d\r\n" % d.limit,
            b"ratelimit-remaining: %d\r\n" % d.remaining,
            b"ratelimit-reset: %d\r\n" % reset,
            b"ratelimit-policy: %s\r\n" % policy,
            b'ratelimit: "%s";r=%d;t=%d\r\n' % (lim.name.encode(), d.remaining, reset),
        )


def make_limiter(store, stats, failure_mode: str):
    """The worker's limiter: in memory for `store: memory`, else in the store."""
    if store.kind == "memory":
        return MemoryLimiter()
    return RedisLimiter(store, stats, failure_mode)
