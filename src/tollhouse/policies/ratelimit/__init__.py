"""Rate limiting (docs/contract.md §2 `rate_limits`, `tiers`, `store_failure`; §3 headers).

One `RateLimitPolicy` per route that declares limits. All of a request's
limits are checked together, in one atomic step (one script call with
Redis), and a rejected request is counted in none of them.
"""
from __future__ import annotations

from .limiter import MemoryLimiter, RedisLimiter
from .policy import RateLimitPolicy
from .schema import RateLimit, Tier

__all__ = ["RateLimit", "Tier", "RateLimitPolicy", "make_limiter"]


def make_limiter(store, stats, failure_mode: str):
    """The worker's limiter: in memory for `store: memory`, else in the store."""
    if store.kind == "memory":
        return MemoryLimiter()
    return RedisLimiter(store, stats, failure_mode)
