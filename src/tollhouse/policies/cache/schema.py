"""Config schema of response caching (route `cache`, top-level `cache`)."""
from __future__ import annotations

from ...config.schema import Duration, Field, Int, ListOf, Schema, Size, Str, error_at

HEADER_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
DEFAULT_STATUSES = (200, 203, 204, 300, 301, 404, 410)


class RouteCache(Schema):
    ttl = Field(Duration(), 60.0,
                "freshness when the upstream gives none (no Cache-Control max-age/s-maxage, no Expires)")
    vary = Field(ListOf(Str(pattern=HEADER_NAME)), (),
                 "request headers that are part of the key (the response's own Vary is always honoured)")
    scope = Field(Str(choices=("public", "consumer")), "public",
                  "public: one entry for every caller (requests with Authorization are served only responses "
                  "marked public or s-maxage); consumer: the authenticated consumer is part of the key")
    stale_while_revalidate = Field(Duration(), 0.0,
                                   "after expiry, serve stale (X-Cache-Status: STALE) this long while one "
                                   "background request refreshes it")
    stale_if_error = Field(Duration(), 0.0,
                           "after expiry, serve stale this long when the upstream fails (5xx, 502/504, open circuit)")
    statuses = Field(ListOf(Int(min=200, max=599)), DEFAULT_STATUSES, "response statuses that may be stored")

    def check(self, path, lines, line, errors):
        if not self.statuses:
            error_at(errors, path, "statuses", lines, line, "needs at least one status")


class CacheSettings(Schema):
    storage = Field(Str(choices=("store", "memory")), "store",
                    "store: where the top-level `store` points (Redis is shared by every instance); "
                    "memory: an LRU in each worker process even when `store` is Redis")
    memory_size = Field(Size(min=4096), 64 * 1024 * 1024, "the memory cache's bound, per worker (LRU beyond)")
    max_entry_size = Field(Size(min=1), 1024 * 1024, "larger responses stream through uncached")
    lock_timeout = Field(Duration(min=0.01), 5.0,
                         "concurrent misses of one key wait this long for the one fetch (the Redis lock's TTL too)")
