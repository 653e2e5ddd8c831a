"""Shared state behind one small async interface: memory or Redis.

Later policies (rate limiting, caching, refresh tokens, circuit state) use
only this interface:

- `await store.run(script, keys, args)`: an atomic script. A `Script` holds
  both its Lua source (run by Redis with EVALSHA, EVAL on NOSCRIPT) and a
  Python function with the same semantics (run by the memory store
  synchronously, hence atomically within the process).
- `get` / `set(key, value, ttl)` / `delete`: bytes values with expiry.
- `lock(key, ttl)` / `unlock(key, token)`: a short exclusive lease.
- `ping()`: True when the store answers (used by /readyz).
"""
from __future__ import annotations

from .base import Script, Store
from .memory import MemoryStore


def open_store(url: str) -> Store:
    """`memory`, `redis://…`, `rediss://…` or `redis+cluster://h1:p1,h2:p2`."""
    if url == "memory":
        return MemoryStore()
    from .redis import RedisStore

    return RedisStore(url)


__all__ = ["Script", "Store", "MemoryStore", "open_store"]
