"""Where limits are counted: in this process, or in Redis with a breaker around it.

`MemoryLimiter.check` is synchronous (atomic within the process).
`RedisLimiter.check` returns a Future resolved by a batch: every request
decided in one event-loop tick goes to Redis in one pipelined round trip,
one atomic script call per request. While Redis fails, a breaker answers
at once with the `store_failure` mode and a background probe closes it
when Redis answers again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from redis.exceptions import NoScriptError, RedisError

from . import algorithms
from .algorithms import Decision

log = logging.getLogger("tollhouse.ratelimit")

_LUA_PATH = os.path.join(os.path.dirname(__file__), "ratelimit.lua")
with open(_LUA_PATH, encoding="utf-8") as _f:
    LUA = _f.read()

_ANNOUNCE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
INSTANCES_KEY = "th:instances:v1"
ANNOUNCE_EVERY = 5.0
INSTANCE_TTL = 15


class LimitTable:
    """States of one limit, by key, in two generations: entries untouched for
    a full generation are dropped, so memory follows the active keys."""

    __slots__ = ("current", "old", "rotate_at", "period")

    def __init__(self, period: float):
        self.current: dict = {}
        self.old: dict = {}
        self.period = period
        self.rotate_at = time.monotonic() + period

    def get(self, key):
        state = self.current.get(key)
        if state is None:
            state = self.old.pop(key, None)
            if state is not None:
                self.current[key] = state
        return state

    def __setitem__(self, key, value):
        self.current[key] = value

    def maybe_rotate(self, now_mono: float) -> None:
        if now_mono >= self.rotate_at:
            self.old = self.current
            self.current = {}
            self.rotate_at = now_mono + self.period


class MemoryLimiter:
    """In-process counting: exact within one process, nothing shared."""

    kind = "memory"

    def __init__(self, clock=time.time):
        self.clock = clock
        self.tables: dict[str, LimitTable] = {}

    def table(self, spec_id: str, spec) -> LimitTable:
        t = self.tables.get(spec_id)
        if t is None:
            algo, limit, window, burst = spec
            period = max(2 * window, burst * window / limit)
            t = self.tables[spec_id] = LimitTable(period)
        return t

    def check(self, specs, spec_ids, keys, divisor: int = 1):
        now = self.clock()
        mono = time.monotonic()
        tables = []
        for spec, sid in zip(specs, spec_ids):
            t = self.table(sid, spec)
            t.maybe_rotate(mono)
            tables.append(t)
        if divisor > 1:
            specs = [(a, max(1, limit // divisor), w, max(1, burst // divisor)) for a, limit, w, burst in specs]
        return _check_tables(specs, tables, keys, now)


def _check_tables(specs, tables, keys, now):
    decisions = []
    updates = []
    allowed = True
    for spec, table, key in zip(specs, tables, keys):
        algo, limit, window, burst = spec
        ok, remaining, reset, retry, new_state = algorithms.evaluate(algo, limit, window, burst, table.get(key), now)
        decisions.append(Decision(ok, limit, remaining, reset, retry, spec))
        if ok:
            updates.append((table, key, new_state))
        else:
            allowed = False
    if allowed:
        for table, key, new_state in updates:
            table[key] = new_state
    return allowed, decisions


class StoreDown(Exception):
    """The breaker is open (or the call just failed): use the fallback."""


class RedisLimiter:
    """Counting in Redis: one script call per request, pipelined per loop tick."""

    kind = "redis"

    def __init__(self, store, stats, failure_mode: str, timeout: float = 0.25):
        self.store = store
        self.client = store.client
        self.cluster = store.kind == "redis-cluster"
        self.stats = stats
        self.failure_mode = failure_mode
        self.timeout = timeout
        self.sha: str | None = None
        self.pending: list = []
        self.flush_scheduled = False
        self.open = False            # breaker state
        self.opened_at = 0.0
        self.probe_task = None
        self.live_instances = 1
        self.instance_id = os.urandom(8).hex()
        self.announcer = None
        self.local = MemoryLimiter()

    # --- the request side ---------------------------------------------------------
    def check(self, specs, keys, resolve):
        """`resolve((allowed, decisions))` or `resolve(StoreDown())` decides; returns
        that at once while the breaker is open, else a Future of it (no task per request)."""
        if self.open:
            return resolve(StoreDown())
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        args = []
        for algo, limit, window, burst in specs:
            args += (algo, limit, int(window * 1000), burst)
        self.pending.append((keys, args, specs, fut, resolve))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._start_flush)
        return fut

    def _start_flush(self):
        self.flush_scheduled = False
        batch, self.pending = self.pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch):
        try:
            results = await asyncio.wait_for(self._run(batch), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed(e)
            results = [None] * len(batch)
        for (keys, args, specs, fut, resolve), result in zip(batch, results):
            if fut.done():
                continue
            if result is None or isinstance(result, Exception):
                outcome = StoreDown()
            else:
                decisions = []
                for i, spec in enumerate(specs):
                    ok, remaining, reset_ms, retry_ms = result[1 + 4 * i:5 + 4 * i]
                    decisions.append(Decision(bool(ok), spec[1], int(remaining), reset_ms / 1000, retry_ms / 1000,
                                              spec))
                outcome = (bool(result[0]), decisions)
            try:
                fut.set_result(resolve(outcome))
            except Exception as e:  # noqa: BLE001 - surfaces as the request's 500
                fut.set_exception(e)

    async def _run(self, batch):
        if self.sha is None:
            self.sha = await self.client.script_load(LUA)
        if self.cluster:
            # Cluster: each request's keys share one slot; calls go to their nodes.
            return await asyncio.gather(*(self._one(keys, args) for keys, args, *_ in batch),
                                        return_exceptions=True)
        pipe = self.client.pipeline(transaction=False)
        for keys, args, *_ in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        results = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in results):
            # The server lost its scripts (restart, SCRIPT FLUSH): load again, redo those.
            self.sha = await self.client.script_load(LUA)
            for i, r in enumerate(results):
                if isinstance(r, NoScriptError):
                    keys, args = batch[i][0], batch[i][1]
                    results[i] = await self.client.evalsha(self.sha, len(keys), *keys, *args)
        for r in results:
            if isinstance(r, (ConnectionError, OSError)) or (isinstance(r, RedisError) and "connect" in str(r).lower()):
                raise r
        return results

    async def _one(self, keys, args):
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(LUA, len(keys), *keys, *args)

    # --- the breaker ------------------------------------------------------------------
    def _failed(self, error) -> None:
        self.stats.inc("store_errors", (("store", self.store.kind),))
        if self.open:
            return
        self.open = True
        self.opened_at = time.monotonic()
        self.stats.gauges[("ratelimit_fallback", (("mode", self.failure_mode),))] = 1
        log.warning("rate-limit store unreachable (%s): store_failure=%s in force until it answers",
                    type(error).__name__, self.failure_mode)
        if self.probe_task is None or self.probe_task.done():
            self.probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self):
        delay = 0.2
        while self.open:
            await asyncio.sleep(delay)
            try:
                if await asyncio.wait_for(self.client.ping(), self.timeout):
                    self.sha = None   # a restarted Redis has no scripts
                    self.open = False
                    self.stats.gauges[("ratelimit_fallback", (("mode", self.failure_mode),))] = 0
                    log.warning("rate-limit store answers again: limiting in the store resumed")
                    return
            except (RedisError, OSError, asyncio.TimeoutError):
                pass
            delay = min(1.0, delay * 2)

    # --- instances, for store_failure: local ----------------------------------------------
    def start_announcing(self):
        if self.announcer is None:
            self.announcer = asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self):
        while True:
            if not self.open:
                try:
                    n = await asyncio.wait_for(
                        self.client.eval(_ANNOUNCE, 1, INSTANCES_KEY, self.instance_id, INSTANCE_TTL), self.timeout)
                    self.live_instances = max(1, int(n))
                except (RedisError, OSError, asyncio.TimeoutError):
                    pass
            await asyncio.sleep(ANNOUNCE_EVERY)

    def status(self) -> dict:
        return {"breaker": "open" if self.open else "closed", "failure_mode": self.failure_mode,
                "in_force": self.failure_mode if self.open else "store", "live_instances": self.live_instances}

    def close(self):
        for t in (self.probe_task, self.announcer):
            if t is not None:
                t.cancel()
