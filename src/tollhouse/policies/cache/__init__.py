"""Response caching (docs/contract.md §2 route `cache`, top-level `cache`; §3 X-Cache-Status, Age).

A route's `CachePolicy` looks a GET/HEAD up before proxying. A fresh entry
answers at once (HIT, with `Age`; a conditional request gets 304). A miss
proceeds to the upstream with a `Fill` attached to the exchange: the
exchange hands it the upstream's head and body bytes as they are relayed,
and the Fill stores the response when it is complete and storable
(rules.py). Concurrent misses of one key wait for that one fetch (one per
process; with Redis, a short lock makes it one per fleet). Expired entries
may still be served: STALE while one background request refreshes them
(`stale_while_revalidate`), or in place of an upstream failure
(`stale_if_error`). A failing Redis turns the cache into a pass-through
(BYPASS) without stalling anyone.

service.py: the worker's `ResponseCache` (storage, batched Redis lookups,
fills in flight, refreshes); policy.py: the route's `CachePolicy` and
`Fill`; here: the kind that declares them.
"""
from __future__ import annotations

from ...config.schema import Field
from ...registry import NotedHeader, PolicyKind, Section
from .policy import CachePolicy
from .schema import CacheSettings, RouteCache
from .service import ResponseCache

__all__ = ["CachePolicy", "CacheSettings", "ResponseCache", "RouteCache", "KIND"]

def _build(config, context, services):
    if config is None:
        return None
    cache = services.worker("cache")
    if cache is None:
        raise ValueError(f"route {context.route_name!r}: cache: this process has no response cache")
    return CachePolicy(config, context, cache=cache)


KIND = PolicyKind("cache", phase=CachePolicy.phase, key="cache", build=_build, outcome=CachePolicy.outcome,
                  service=lambda config, store, stats, worker: ResponseCache(config.cache, store, stats, worker),
                  field=Field(RouteCache, None, "cache GET/HEAD responses: {ttl, vary, scope, "
                              "stale_while_revalidate, stale_if_error, statuses}; see docs/caching.md"),
                  # Conditionals are answered by the cache itself; credentials and cookies decide what is shared.
                  headers=tuple(NotedHeader(name) for name in ("range", "if-none-match", "if-modified-since",
                                                                   "cookie", "authorization")),
                  sections=(Section("cache", Field(CacheSettings, CacheSettings(), "where routes' cached responses "
                                                   "live and how big they may be")),))
