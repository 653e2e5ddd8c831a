"""Rate limiting (docs/contract.md §2 `rate_limits`, `tiers`, `store_failure`; §3 headers).

One `RateLimitPolicy` per route that declares limits. All of a request's
limits are checked together, in one atomic step (one script call with
Redis), and a rejected request is counted in none of them.
"""
from __future__ import annotations

from ...config.schema import Field, ListOf, MapOf
from ...registry import PolicyKind, Section
from .limiter import MemoryLimiter, RedisLimiter
from .policy import RateLimitPolicy
from .schema import RateLimit, Regions, Tier, check_regions

__all__ = ["RateLimit", "Tier", "RateLimitPolicy", "make_limiter", "KIND"]


def make_limiter(store, stats, config):
    """The worker's limiter: in memory for `store: memory`, else in the store (with the
    region sync when `regions` is set)."""
    if store.kind == "memory":
        return MemoryLimiter()
    return RedisLimiter(store, stats, config.store_failure, regions=config.regions)


def _build(config, context, services):
    if not config:
        return None
    limiter = services.worker("ratelimit") or services.once(
        "ratelimit", lambda: make_limiter(services.store, services.stats, services.config))
    return RateLimitPolicy(config, context, tiers=services.config.tiers, limiter=limiter,
                           route_name=context.route_name)


KIND = PolicyKind("ratelimit", phase=RateLimitPolicy.phase, key="rate_limits", build=_build,
                  outcome=RateLimitPolicy.outcome,
                  service=lambda config, store, stats, worker: make_limiter(store, stats, config),
                  field=Field(ListOf(RateLimit), (), "limits checked together; see docs/ratelimiting.md"),
                  sections=(Section("tiers", Field(MapOf(Tier, key_pattern=r"[A-Za-z0-9_.-]+"), {},
                                                   "tier name -> {rate_limits}; callers without a tier use `default`")),
                            Section("regions", Field(Regions, None, "{name, peers: {region: redis://...}, "
                                                     "sync_interval, on_partition, partition_after}: scope: global "
                                                     "limits counted across regions; see docs/regions.md"),
                                    check=check_regions)))
