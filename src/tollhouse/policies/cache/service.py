"""The worker's response cache, kept across reloads: storage, batched Redis lookups,
fills in flight, background refreshes (the kind that declares it is in __init__.py)."""
from __future__ import annotations

import asyncio
import logging
from time import time

from ...pipeline import Deferred, Reply
from ...store.batch import TickBatcher, in_task
from ...store.guard import STORE_ERRORS, StoreGuard
from .policy import CachePolicy, Fill, Flight
from .schema import CacheSettings
from .storage import Entry, MemoryCache, RedisCache

log = logging.getLogger("tollhouse.cache")

STORE_TIMEOUT = 0.25   # a Redis call slower than this counts as a failure (BYPASS)
MAX_IN_FLIGHT = 2      # batched lookups out at once; later requests join the next batch
MAX_BATCH = 256


class ResponseCache:
    """A worker's cache, kept across config reloads: storage, fills in flight, refreshes."""

    def __init__(self, settings: CacheSettings, store, stats, worker):
        self.settings = settings
        self.gateway_store = store   # (`store` is the method that keeps an entry)
        self.stats = stats
        self.worker = worker
        self.guard = None
        if settings.storage == "store" and store.kind != "memory":
            self.storage = RedisCache(store)
            self.guard = StoreGuard(store.client, STORE_TIMEOUT, self._guard_changed)
            stats.declare("store_errors", (("store", "redis"),))
            stats.declare_gauge("cache_bypass")
        else:
            self.storage = MemoryCache(settings.memory_size)
        self.memory = self.storage.kind == "memory"
        self.flights: dict[str, Flight] = {}
        self.refreshing: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.batcher = TickBatcher(in_task(self._flush), MAX_IN_FLIGHT, MAX_BATCH)   # Redis lookups of a tick: one MGET
        self.cluster = store.kind == "redis-cluster"

    # --- a worker service (tollhouse.registry) -----------------------------------------
    def reconfigure(self, config) -> "ResponseCache":
        """Kept across reloads (entries and all) unless the storage itself changes."""
        if config.cache.storage != self.settings.storage:
            return ResponseCache(config.cache, self.gateway_store, self.stats, self.worker)
        self.settings = config.cache
        if self.memory:
            self.storage.max_bytes = config.cache.memory_size
        return self

    def export(self, gauges: dict) -> None:
        """Gauges read at each metrics snapshot."""
        if self.memory:
            gauges[("cache_memory_bytes", ())] = self.storage.size
            gauges[("cache_memory_entries", ())] = len(self.storage.entries)

    # --- Redis, guarded --------------------------------------------------------------
    def failed(self, error: BaseException) -> None:
        self.stats.inc("store_errors", (("store", "redis"),))
        self.guard.failed(error)

    def _guard_changed(self, open_: bool, error) -> None:
        self.stats.gauges[("cache_bypass", ())] = 1 if open_ else 0
        if open_:
            log.warning("cache store unreachable (%s): caching bypassed until it answers", type(error).__name__)
        else:
            log.warning("cache store answers again: caching resumed")

    # --- batched lookups: the requests of a loop tick share one MGET (no task per request) ---
    def lookup(self, policy: "CachePolicy", exchange, key: str, shared_only: bool) -> Deferred:
        deferred = Deferred()
        self.batcher.add((key, deferred, policy, exchange, shared_only))
        return deferred

    async def _flush(self, batch) -> None:
        keys = [item[0] for item in batch]
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                if self.cluster:
                    values = await self.storage.client.mget_nonatomic(keys)
                else:
                    values = await self.storage.store.command("MGET", *keys)
        except STORE_ERRORS as e:
            self.failed(e)
            values = None
        now = time()
        for i, (key, deferred, policy, exchange, shared_only) in enumerate(batch):
            if exchange.finished:
                continue
            try:
                if values is None:
                    deferred.resolve(policy.bypass(exchange))
                    continue
                raw = values[i]
                entry = Entry.decode(raw) if raw else None
                if entry is not None and entry.vary is not None:
                    # Varies on request headers: its variant needs a second lookup.
                    self.spawn(self._settle(deferred, policy.lookup_redis(exchange, key, shared_only, entry)))
                    continue
                result = policy.decide(exchange, key, key, entry, shared_only, now)
                if result is None or result.__class__ is Reply:
                    deferred.resolve(result)
                else:
                    self.spawn(self._settle(deferred, result))
            except Exception as e:  # noqa: BLE001 - surfaces as that request's 500
                deferred.fail(e)

    @staticmethod
    async def _settle(deferred: Deferred, pending) -> None:
        try:
            result = await pending
        except Exception as e:  # noqa: BLE001
            deferred.fail(e)
        else:
            deferred.resolve(result)

    async def fetch(self, key: str, policy: "CachePolicy", exchange,
                    marker: Entry | None = None) -> tuple[str, Entry | None]:
        """(key, entry) from Redis, following a Vary marker to its variant (with `marker`, the
        one already read at `key`, only the variant is read); raises STORE_ERRORS."""
        async with asyncio.timeout(STORE_TIMEOUT):
            entry = marker if marker is not None else await self.storage.get(key)
            if entry is not None and entry.vary is not None:
                key = policy.variant_key(key, entry.vary, exchange)
                entry = await self.storage.get(key)
        return key, entry

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- fills ------------------------------------------------------------------------
    def end_flight(self, key: str, flight: Flight | None, entry: Entry | None, failed: bool) -> None:
        if flight is None:
            return
        if self.flights.get(key) is flight:
            del self.flights[key]
        for waiter in flight.waiters:
            if not waiter.done():
                waiter.set_result((entry, failed))

    def store(self, primary: str, key: str, entry: Entry, marker: Entry | None, lock: str | None,
              lock_key: str, now: float) -> None:
        """Keep `entry` at `key` (and a Vary marker at `primary`), then release the fill's lock."""
        self.stats.inc("cache_stored_bytes", (), len(entry.body))
        if self.memory:
            if marker is not None:
                self.storage.put(primary, marker)
            self.storage.put(key, entry)
            return
        self.spawn(self._store_redis(primary, key, entry, marker, lock, lock_key, now))

    async def _store_redis(self, primary, key, entry, marker, lock, lock_key, now) -> None:
        storage = self.storage
        try:
            async with asyncio.timeout(STORE_TIMEOUT * 4):
                if marker is not None:
                    await storage.put(primary, marker, now)
                await storage.put(key, entry, now)
                if lock is not None:
                    await storage.unlock(lock_key, lock)
        except STORE_ERRORS as e:
            self.failed(e)

    def release(self, key: str, lock: str | None) -> None:
        if lock is not None and not self.memory:
            self.spawn(self.guarded(self.storage.unlock(key, lock)))

    async def guarded(self, call, default=None):
        """A Redis call within STORE_TIMEOUT; a failure opens the guard and gives `default`."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                return await call
        except STORE_ERRORS as e:
            self.failed(e)
            return default

    # --- stale-while-revalidate --------------------------------------------------------
    def refresh(self, policy: "CachePolicy", exchange, key: str, primary: str) -> None:
        """One background request per key renews an entry served STALE."""
        if key in self.refreshing:
            return
        self.refreshing.add(key)
        if self.memory:
            self._start_refresh(policy, exchange, key, primary, None)
        else:
            self.spawn(self._refresh_fleet(policy, exchange, key, primary))

    async def try_lock(self, key) -> str | None:
        """The key's fleet-wide lock for lock_timeout: a token, or None (held elsewhere, or Redis failed).
        Locks are per variant key, so variants of one URL are fetched independently."""
        return await self.guarded(self.storage.lock(key, self.settings.lock_timeout))

    async def _refresh_fleet(self, policy, exchange, key, primary) -> None:
        # The lock makes it one refresh for the whole fleet, not one per instance.
        lock = await self.try_lock(key)
        if lock is None:
            self.refreshing.discard(key)
            return
        self._start_refresh(policy, exchange, key, primary, lock)

    def _start_refresh(self, policy, exchange, key, primary, lock) -> None:
        from ...exchange.subrequest import start_subrequest

        route = exchange.route
        path = exchange.path if route.path_kept else route.upstream_path(exchange.path, exchange.params)
        start_subrequest(self.worker, route.choose_pool(exchange).name, b"GET", path + exchange.query, headers=exchange.headers,
                         timeout=route.timeout, parent=exchange, host=exchange.host if route.preserve_host else None,
                         observe=lambda ex: Fill(policy, ex, primary, key, None, None, False, lock, self.refreshing))

    async def purge(self, route: str | None, prefix: str | None, tag: str | None) -> int:
        if self.memory:
            return self.storage.purge(route, prefix, tag)
        try:
            return await self.storage.purge(route, prefix, tag)
        except STORE_ERRORS as e:
            self.failed(e)
            raise

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        for task in list(self.tasks):
            task.cancel()
