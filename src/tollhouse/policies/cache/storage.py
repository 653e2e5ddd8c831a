"""Where responses are kept: an LRU in this process bounded by bytes, or Redis.

Both hold `Entry` objects under versioned keys (Redis: "th:c1:<hash>") and
purge by route, path prefix or surrogate key. The memory cache is
synchronous (a hit costs no task); the Redis cache is async and keeps three
indexes for purging, all under one hash tag so that Redis Cluster can serve
them: a set per route, a set per surrogate key, and one sorted set of
"path NUL key" members whose lexicographic ranges answer prefix purges.
"""
from __future__ import annotations

from collections import OrderedDict

import orjson

KEY_PREFIX = "th:c1:"
_INDEX = "th:c1:{idx}:"
_FORMAT = b"TC1"


class Entry:
    """A stored response (or, with `vary` set, a marker naming the headers its variants depend on)."""

    __slots__ = ("status", "lines", "body", "stored_at", "age", "fresh_until", "stale_until", "error_until",
                 "shared", "etag", "last_modified", "route", "path", "tags", "vary", "size", "block", "expires_at")

    def __init__(self, status: int = 0, lines: tuple = (), body: bytes = b"", stored_at: float = 0.0,
                 age: float = 0.0, fresh_until: float = 0.0, stale_until: float = 0.0, error_until: float = 0.0,
                 shared: bool = False, etag: str | None = None, last_modified: str | None = None, route: str = "",
                 path: str = "", tags: tuple = (), vary: tuple | None = None):
        self.status = status
        self.lines = lines
        self.body = body
        self.stored_at = stored_at
        self.age = age
        self.fresh_until = fresh_until
        self.stale_until = stale_until
        self.error_until = error_until
        self.shared = shared
        self.etag = etag
        self.last_modified = last_modified
        self.route = route
        self.path = path
        self.tags = tags
        self.vary = vary
        self.block = b"".join(lines)   # the header lines as a hit sends them
        self.expires_at = max(fresh_until, stale_until, error_until)
        self.size = len(body) + 2 * len(self.block) + 256

    def encode(self) -> bytes:
        meta = orjson.dumps({
            "s": self.status, "h": [line.decode("latin-1") for line in self.lines], "t": self.stored_at,
            "a": self.age, "f": self.fresh_until, "w": self.stale_until, "e": self.error_until, "p": self.shared,
            "et": self.etag, "lm": self.last_modified, "r": self.route, "u": self.path, "g": list(self.tags),
            "v": list(self.vary) if self.vary is not None else None})
        return b"%s%08d%s%s" % (_FORMAT, len(meta), meta, self.body)

    @classmethod
    def decode(cls, data: bytes) -> "Entry | None":
        if not data.startswith(_FORMAT):
            return None   # another format version: a miss, overwritten by the next fill
        n = int(data[3:11])
        m = orjson.loads(data[11:11 + n])
        return cls(m["s"], tuple(h.encode("latin-1") for h in m["h"]), data[11 + n:], m["t"], m["a"], m["f"], m["w"],
                   m["e"], m["p"], m["et"], m["lm"], m["r"], m["u"], tuple(m["g"]),
                   tuple(m["v"]) if m["v"] is not None else None)


class MemoryCache:
    """Per process: least recently used entries go first once `max_bytes` is reached."""

    __slots__ = ("entries", "size", "max_bytes")

    kind = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.size = 0

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        self._drop(key)
        self.entries[key] = entry
        self.size += entry.size
        while self.size > self.max_bytes:
            old_key, old = self.entries.popitem(last=False)
            self.size -= old.size

    def _drop(self, key: bytes) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= old.size

    def purge(self, route: str | None = None, prefix: str | None = None, tag: str | None = None) -> int:
        doomed = [k for k, e in self.entries.items()
                  if (route is None or e.route == route) and (prefix is None or e.path.startswith(prefix))
                  and (tag is None or tag in e.tags)]
        # Vary markers carry no route/path of their own and stay: they only name headers.
        for k in doomed:
            self._drop(k)
        return len(doomed)


class RedisCache:
    """Shared by every gateway instance on the store's Redis (single node or Cluster)."""

    kind = "redis"

    def __init__(self, store):
        self.store = store
        self.client = store.client

    async def get(self, key: str) -> Entry | None:
        data = await self.client.get(key)
        return Entry.decode(data) if data else None

    async def put(self, key: str, entry: Entry, now: float) -> None:
        ttl_ms = max(1, int((entry.expires_at - now) * 1000))
        ttl_s = ttl_ms // 1000 + 1
        pipe = self.client.pipeline(transaction=False)
        pipe.set(key, entry.encode(), px=ttl_ms)
        if entry.vary is None:
            indexes = [_INDEX + "route:" + entry.route] + [_INDEX + "tag:" + t for t in entry.tags]
            for index in indexes:
                pipe.sadd(index, key)
            pipe.zadd(_INDEX + "paths", {f"{entry.path}\0{key}": 0})
            # An index lives as long as its longest-lived entry (NX sets a first
            # expiry, GT only ever extends it).
            for index in indexes + [_INDEX + "paths"]:
                pipe.expire(index, ttl_s, nx=True)
                pipe.expire(index, ttl_s, gt=True)
        await pipe.execute()

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self.store.lock(key + ":lock", ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self.store.unlock(key + ":lock", token)

    async def purge(self, route: str | None = None, prefix: str | None = None, tag: str | None = None) -> int:
        client = self.client
        paths_key = _INDEX + "paths"
        if prefix is not None:
            members = await client.zrangebylex(paths_key, b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff")
        else:
            members = await client.zrange(paths_key, 0, -1)
        by_key = {m.rsplit(b"\0", 1)[1]: m for m in members}
        candidates = set(by_key)
        if route is not None:
            candidates &= set(await client.smembers(_INDEX + "route:" + route))
        if tag is not None:
            candidates &= set(await client.smembers(_INDEX + "tag:" + tag))
        removed = 0
        for key in candidates:   # one key per call: Cluster slots stay simple
            removed += await client.delete(key)
        if candidates:
            await client.zrem(paths_key, *(by_key[k] for k in candidates))
        if route is None and prefix is None and tag is None:
            await client.delete(paths_key)
        return removed
