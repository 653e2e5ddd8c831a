"""Where limits are counted: in this process, or in Redis with a breaker around it.

`MemoryLimiter.check` is synchronous (atomic within the process).
`RedisLimiter.check` returns a Future resolved by a batch: the requests
gathered while at most MAX_IN_FLIGHT batches are out go to Redis in one
script call (one per hash slot with Cluster), which decides each request
atomically, in order, in one round trip. While Redis fails, a breaker answers
at once with the `store_failure` mode and a background probe closes it
when Redis answers again.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from redis.exceptions import NoScriptError

from ...pipeline import Deferred
from ...store.batch import TickBatcher
from ...store.guard import STORE_ERRORS, StoreGuard
from . import algorithms
from .algorithms import LimitTable

log = logging.getLogger("tollhouse.ratelimit")

_LUA_PATH = os.path.join(os.path.dirname(__file__), "ratelimit.lua")
with open(_LUA_PATH, encoding="utf-8") as _f:
    LUA = _f.read()
LUA_SHA = hashlib.sha1(LUA.encode()).hexdigest()   # EVALSHA's name for it; NOSCRIPT: sent with EVAL

_ANNOUNCE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
INSTANCES_KEY = "th:instances:v1"
MAX_IN_FLIGHT = 1     # script calls out at once; more requests wait for the next batch
MAX_BATCH = 256       # requests per script call
_CALLS = ("ratelimit_store_calls", ())
ANNOUNCE_EVERY = 5.0
INSTANCE_TTL = 15


class MemoryLimiter:
    """In-process counting: exact within one process, nothing shared."""

    kind = "memory"

    def __init__(self):
        self.tables: dict[str, LimitTable] = {}

    def reconfigure(self, config) -> "MemoryLimiter":
        """A worker service (tollhouse.registry): kept across reloads, tables and all."""
        return self

    def table(self, spec_id: str, spec) -> LimitTable:
        t = self.tables.get(spec_id)
        if t is None:
            algo, limit, window, burst = spec
            t = self.tables[spec_id] = LimitTable(max(2 * window, burst * window / limit))
        return t


def decide(limits, tables, keys, now: float, divisor: int, costs=None):
    """Check every limit; count in all of them only if all allow (nothing otherwise).

    Returns (allowed, [(ok, limit, remaining, reset, retry), ...]). `divisor`
    scales limits down for store_failure: local; `costs` weighs the request per limit
    (None: 1 in each).
    """
    decisions = []
    updates = []
    allowed = True
    evaluate = algorithms.evaluate
    for i in range(len(limits)):
        lim, table, key = limits[i], tables[i], keys[i]
        limit, burst = lim.limit, lim.burst
        if divisor > 1:
            limit, burst = max(1, limit // divisor), max(1, burst // divisor)
        ok, remaining, reset, retry, state = evaluate(lim.algo, limit, lim.window, burst, table.get(key, now), now,
                                                      1 if costs is None else costs[i])
        decisions.append((ok, limit, remaining, reset, retry))
        if ok:
            updates.append((table, key, state))
        else:
            allowed = False
    if allowed:
        for table, key, state in updates:
            table.current[key] = state
    return allowed, decisions


def _region_sync(config, store, stats):
    if config is None:
        return None
    from .regions import RegionSync

    return RegionSync(config, store, stats)


class _AllDone:
    """`done()` once the last of `count` calls is over."""

    __slots__ = ("left", "done")

    def __init__(self, count, done):
        self.left, self.done = count, done

    def __call__(self):
        self.left -= 1
        if not self.left:
            self.done()


class _Answer:
    """The store's callback for one batch's script call (an object, not a closure:
    the compiled build allows none in methods)."""

    __slots__ = ("limiter", "batch", "command", "done")

    def __init__(self, limiter, batch, command, done):
        self.limiter, self.batch, self.command, self.done = limiter, batch, command, done

    def __call__(self, reply, error):
        self.limiter.answered(self.batch, self.command, reply, error, self.done)


class StoreDown(Exception):
    """The breaker is open (or the call just failed): use the fallback."""


class RedisLimiter:
    """Counting in Redis: the requests of a loop tick go out in one script call
    (per hash slot), each request decided atomically within it.

    Compiled with Cython (limiter.pxd): the per-request parts (`check`, the
    batch's arguments and the answers' decisions) run as C."""

    __slots__ = ("store", "client", "cluster", "stats", "failure_mode", "timeout", "batcher", "guard",
                 "live_instances", "instance_id", "announcer", "local", "regions")

    kind = "redis"

    def __init__(self, store, stats, failure_mode: str, timeout: float = 0.25, regions=None):
        self.store = store
        self.client = store.client
        self.cluster = store.kind == "redis-cluster"
        self.stats = stats
        self.failure_mode = failure_mode
        self.timeout = timeout
        self.batcher = TickBatcher(self._send, MAX_IN_FLIGHT, MAX_BATCH)
        self.guard = StoreGuard(self.client, timeout, self._guard_changed)
        self.live_instances = 1
        self.instance_id = os.urandom(8).hex()
        self.announcer = None
        self.local = MemoryLimiter()   # for store_failure: local
        self.regions = _region_sync(regions, store, stats)   # global limits' counts shared with the peers
        stats.declare("store_errors", (("store", store.kind),))
        stats.declare_gauge("ratelimit_fallback", (("mode", failure_mode),))

    # --- the request side ---------------------------------------------------------
    def check(self, limits, store_keys, policy, exchange, keys, costs=None):
        """`policy.resolved(exchange, limits, keys, (allowed, decisions) | StoreDown(), costs)`
        decides; returned at once while the breaker is open, else through a
        Deferred (no task per request). `costs`: the request's weight per limit, or None."""
        if self.guard.open:
            return policy.resolved(exchange, limits, keys, StoreDown(), costs)
        fut = Deferred()
        self.batcher.add((store_keys, limits, fut, policy, exchange, keys, costs))
        return fut

    def _send(self, batch, done):
        """The batcher's send: one script call for the batch (one per hash slot group
        with Cluster), each request decided from its answer; then `done()`."""
        if not self.cluster:
            self._call(batch, done)
            return
        groups: dict[bytes, list] = {}
        for item in batch:
            key = item[0][0]
            groups.setdefault(key[:key.index(b"}") + 1], []).append(item)
        after = _AllDone(len(groups), done)
        for group in groups.values():
            self._call(group, after)

    def _call(self, batch, done):
        keys_all: list = []
        profiles: dict = {}
        profile_args: list = []
        run_args: list = []
        # Partitioned with on_partition: share: global limits go capped at this region's share.
        share = self.regions is not None and self.regions.share_now
        # Consecutive requests with the same keys and limits (one client's burst, a
        # route or global key) go as one run: its keys and profile once, then a count.
        last_keys = last_limits = last_costs = None
        count = 0
        for item in batch:
            store_keys, limits, costs = item[0], item[1], item[6]
            if (store_keys is last_keys or store_keys == last_keys) and (
                    limits is last_limits or limits == last_limits) and costs == last_costs:
                count += 1
                continue
            if count:
                run_args.append(b"%d" % count)
            count = 1
            last_keys, last_limits, last_costs = store_keys, limits, costs
            keys_all += store_keys
            # A profile per set of limits, and per weight where a limit weighs requests.
            profile = id(limits) if costs is None else (id(limits), costs)
            index = profiles.get(profile)
            if index is None:
                index = profiles[profile] = b"%d" % (len(profiles) + 1)
                profile_args.append(b"%d" % len(limits))
                for i in range(len(limits)):
                    lim = limits[i]
                    args = lim.partition_args if share and lim.partition_args else lim.script_args
                    if costs is None or costs[i] == 1:
                        profile_args += args
                    else:
                        profile_args += (*args[:4], b"%d" % costs[i])
            run_args.append(index)
        run_args.append(b"%d" % count)
        counters = self.stats.counters
        counters[_CALLS] = counters.get(_CALLS, 0) + 1
        # Everything already bytes: packing passes bytes through.
        command = ("EVALSHA", LUA_SHA, len(keys_all), *keys_all, b"%d" % len(profiles), *profile_args,
                   b"%d" % (len(run_args) // 2), *run_args)
        self.store.call(command, _Answer(self, batch, command, done), self.timeout)

    def answered(self, batch, command, flat, error, done):
        """The script's answer for `batch` (or the error instead): each request decided."""
        if error is not None:
            if error.__class__ is NoScriptError and command[0] == "EVALSHA":
                # The server lost its scripts (restart, SCRIPT FLUSH): EVAL loads it again.
                command = ("EVAL", LUA, *command[2:])
                self.store.call(command, _Answer(self, batch, command, done), self.timeout)
                return
            self._failed(error)
        try:
            pos = 0
            for item in batch:
                limits, fut, policy, exchange = item[1], item[2], item[3], item[4]
                n = len(limits)
                if error is None and n == 1 and flat[pos]:
                    # The common case, one limit that allows: no lists, no general decision path.
                    lim = limits[0]
                    policy.admit(exchange, lim, (True, lim.limit, flat[pos + 2], flat[pos + 3] / 1000, 0.0),
                                 "allowed")
                    pos += 5
                    fut.resolve(None)
                    continue
                if error is not None:
                    outcome = StoreDown()
                else:
                    decisions = []
                    for i in range(n):
                        at = pos + 1 + 4 * i
                        decisions.append((bool(flat[at]), limits[i].limit, int(flat[at + 1]), flat[at + 2] / 1000,
                                          flat[at + 3] / 1000))
                    outcome = (bool(flat[pos]), decisions)
                    pos += 1 + 4 * n
                try:
                    decision = policy.resolved(exchange, limits, item[5], outcome, item[6])
                except Exception as e:  # noqa: BLE001 - surfaces as the request's 500
                    fut.fail(e)
                else:
                    fut.resolve(decision)
        except Exception as e:  # noqa: BLE001 - a reply not as the script writes it (too short)
            # Every request not decided yet fails (a 500 each) rather than waiting forever;
            # a decided one has no chain left, and failing it does nothing.
            log.error("rate-limit script reply unreadable: %r", e)
            for item in batch:
                item[2].fail(e)
        finally:
            done()

    # --- the breaker ------------------------------------------------------------------
    @property
    def open(self) -> bool:
        return self.guard.open

    def _failed(self, error) -> None:
        self.stats.inc("store_errors", (("store", self.store.kind),))
        self.guard.failed(error)

    def _guard_changed(self, open_: bool, error) -> None:
        self.stats.gauges[("ratelimit_fallback", (("mode", self.failure_mode),))] = 1 if open_ else 0
        if open_:
            log.warning("rate-limit store unreachable (%s): store_failure=%s in force until it answers",
                        type(error).__name__, self.failure_mode)
        else:
            log.warning("rate-limit store answers again: limiting in the store resumed")

    # --- a worker service (tollhouse.registry) ---------------------------------------------
    def reconfigure(self, config) -> "RedisLimiter":
        self.failure_mode = config.store_failure
        if repr(config.regions) != repr(self.regions.config if self.regions is not None else None):
            if self.regions is not None:
                self.regions.close()
            self.regions = _region_sync(config.regions, self.store, self.stats)
        return self

    def start(self, config) -> None:
        if self.regions is not None:
            self.regions.start()
        # store_failure: local divides limits by the live instances, which announce themselves.
        if config.store_failure == "local":
            self.start_announcing()

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
                except STORE_ERRORS:
                    pass
            await asyncio.sleep(ANNOUNCE_EVERY)

    def status(self) -> dict:
        found = {"breaker": "open" if self.open else "closed", "failure_mode": self.failure_mode,
                 "in_force": self.failure_mode if self.open else "store", "live_instances": self.live_instances}
        if self.regions is not None:
            found["regions"] = self.regions.status()
        return found

    def close(self):
        self.guard.close()
        if self.regions is not None:
            self.regions.close()
        if self.announcer is not None:
            self.announcer.cancel()
