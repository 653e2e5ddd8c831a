"""Rate limits across regions (docs/regions.md; top-level `regions`, `scope: global`).

Each region counts a global limit in its own store, as its own component of a
G-counter per key and window: ratelimit.lua adds the other regions' last-known
components (`<key>:regions`, one field per region, "window:count:previous") to
its own count when it decides, so a decision stays one local round trip, and
notes each key it counted in the tag's `:dirty` set.

`RegionSync` runs beside the limiter, off the request path. Every
`sync_interval` it takes the dirty keys with their current components from
the local store and *pushes* them into each peer's store, merged there by
maximum (a G-counter's merge: never lost, never counted twice, in any order,
any number of times). Pushing, rather than letting peers read, means each
region writes only to the others and reads only its own store: one round trip
per peer per interval, whatever the number of keys, and a peer's view of us
is as fresh as our last successful push. A push also leaves a heartbeat (time
and per-limit admission rates) in the peer's store: from the heartbeats in
our own store we know how stale our view of each peer is (its sync lag), and
so the current bound on over-admission.

A peer we cannot write to, or whose heartbeat is older than
`partition_after`, is partitioned: with `on_partition: share` global limits
are then capped at this region's share (limit / regions) of its own. When
the peer answers again, it gets every component we know in full (it may have
lost what we pushed before).

`mode: escrow` limits are not a G-counter: each region holds a share of the
limit (ratelimit.lua admits within share + got - lent) and `RegionSync`
borrows for the keys that run short. Every `sync_interval` it takes the
escrow keys asked for since the last round (with their counts and demand)
and, for each whose projected demand exceeds what this region holds, runs
LEND in each peer's store: the peer gives only what it holds beyond its own
projected need, and the loan is committed there (its `l`) before we count
it here (APPLY, our `g`). A loan whose answer is lost is only unused, never
counted twice: the peer answers with its running total lent to us this
window, and APPLY adds the difference to what we already counted. So the
regions together never hold more than the limit, under any lag or partition.
Loans are for one window: the next starts from the shares again.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ...store import Script
from ...store.guard import STORE_ERRORS

log = logging.getLogger("tollhouse.regions")

HEARTBEAT = "th:regions:v1:heartbeat:"
_FORGET_AFTER = 600.0   # seconds a key's last-known own component is kept for full pushes

# Take the dirty keys of one hash tag and read their components (w, c, p) and TTLs.
_TAKE_DIRTY = """
local out = {}
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
for _, k in ipairs(members) do
  local s = redis.call('HMGET', k, 'w', 'c', 'p')
  if s[1] then
    out[#out + 1] = k
    out[#out + 1] = s[1]
    out[#out + 1] = s[2] or '0'
    out[#out + 1] = s[3] or '0'
    out[#out + 1] = redis.call('PTTL', k)
  end
end
return out
"""

# On a peer: merge our components by maximum. KEYS: '<key>:regions' hashes (one hash tag);
# ARGV[1]: our region, then per key: window, count, previous, ttl_ms.
_MERGE = """
for i, k in ipairs(KEYS) do
  local b = 1 + (i - 1) * 4
  local w, c, p, ttl = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local old = redis.call('HGET', k, ARGV[1])
  local newer = true
  if old then
    local ow, oc = string.match(old, '^(%-?%d+):(%d+)')
    ow, oc = tonumber(ow), tonumber(oc)
    if ow > w or (ow == w and oc >= c) then newer = false end
  end
  if newer then redis.call('HSET', k, ARGV[1], w .. ':' .. c .. ':' .. p) end
  if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
end
return 1
"""


# Escrow: the keys asked for since the last round, with the store's clock (ms) first, then per key
# its name and w, c, g, l, d, q (window, own count, got, lent, demand, last window's demand).
_TAKE_ESCROW = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
for _, k in ipairs(members) do
  local s = redis.call('HMGET', k, 'w', 'c', 'g', 'l', 'd', 'q')
  if s[1] then
    out[#out + 1] = k
    for i = 1, 6 do out[#out + 1] = s[i] or '0' end
  end
end
return out
"""

# In the lender's store (run by the borrower): lend what this region holds beyond its own
# projected need for the rest of the window. ARGV: borrower, window index, asked, this region's
# share, window_ms, headroom (percent). Returns {window index here, total lent to the borrower
# this window}; nothing is lent for a window that is not the current one here.
_LEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[5])
local index = math.floor(now / window)
local field = 'l:' .. ARGV[1]
if index ~= tonumber(ARGV[2]) then return {index, 0} end
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p', 'g', 'l', 'd', 'q', field)
local sw = tonumber(s[1])
local c, p, g, l, d, q = tonumber(s[2] or '0'), tonumber(s[3] or '0'), tonumber(s[4] or '0'),
                         tonumber(s[5] or '0'), tonumber(s[6] or '0'), tonumber(s[7] or '0')
local given = 0
if sw == index then
  if s[8] then
    local fw, fa = string.match(s[8], '^(%-?%d+):(%d+)$')
    if tonumber(fw) == index then given = tonumber(fa) end
  end
else
  local last = sw == index - 1
  p, q = last and c or 0, last and d or 0
  c, g, l, d = 0, 0, 0, 0
end
-- This region's own need for the rest of the window: its demand's rate so far (once a tenth of
-- the window has shown it), or the last window's if that was higher, with headroom.
local elapsed = now - index * window
local rate = q / window
if elapsed * 10 >= window and d / elapsed > rate then rate = d / elapsed end
local keep = math.ceil(rate * (window - elapsed) * tonumber(ARGV[6]) / 100) + 1
local give = math.min(tonumber(ARGV[3]), tonumber(ARGV[4]) + g - l - c - keep)
if give <= 0 then return {index, given} end
given = given + give
redis.call('HSET', KEYS[1], 'w', index, 'c', c, 'p', p, 'g', g, 'l', l + give, 'd', d, 'q', q,
           field, index .. ':' .. given)
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {index, given}
"""

# In the borrower's own store: count a peer's loan (its running total for the window) once.
# ARGV: peer, window index, total lent. Returns what was added.
_APPLY = """
local field = 'g:' .. ARGV[1]
local s = redis.call('HMGET', KEYS[1], 'w', 'g', field)
local w = tonumber(ARGV[2])
if tonumber(s[1]) ~= w then return 0 end
local had = 0
if s[3] then
  local fw, fa = string.match(s[3], '^(%-?%d+):(%d+)$')
  if tonumber(fw) == w then had = tonumber(fa) end
end
local total = tonumber(ARGV[3])
if total <= had then return 0 end
redis.call('HSET', KEYS[1], 'g', tonumber(s[2] or '0') + total - had, field, w .. ':' .. total)
return total - had
"""
ESCROW_HEADROOM = 120   # percent of its projected need a lender keeps


def _redis_only(*_):
    raise RuntimeError("regions need a Redis store")


TAKE_DIRTY = Script("regions_take_dirty", _TAKE_DIRTY, _redis_only)
MERGE = Script("regions_merge", _MERGE, _redis_only)
TAKE_ESCROW = Script("regions_take_escrow", _TAKE_ESCROW, _redis_only)
LEND = Script("regions_lend", _LEND, _redis_only)
APPLY = Script("regions_apply", _APPLY, _redis_only)


class EscrowLimit:
    """A `mode: escrow` limit as the sync sees it: its label, limit, window and every region's share."""

    __slots__ = ("label", "limit", "window_ms", "shares")

    def __init__(self, label: str, limit: int, window: float, shares: dict):
        self.label, self.limit, self.window_ms, self.shares = label, limit, int(window * 1000), shares


class Peer:
    __slots__ = ("name", "store", "up", "full", "lag", "last_push", "rates")

    def __init__(self, name: str, url: str, timeout: float):
        from ...store.redis import RedisStore

        self.name = name
        # A call crosses regions: it may take as long as a peer may be silent before it counts as
        # partitioned (the local store's 0.5 s would cut off any link slower than that).
        self.store = RedisStore(url, timeout=timeout)
        self.up = True
        self.full = True          # send every known component next time (first push, or back from a failure)
        self.lag = None           # seconds since its last heartbeat in our store
        self.last_push = 0.0
        self.rates: dict = {}     # its admissions per second per limit, from its heartbeat


class RegionSync:
    """This region's side of the global counters: publishing, heartbeats, partition state."""

    def __init__(self, config, store, stats):
        self.config = config
        self.name = config.name
        self.store = store
        self.stats = stats
        self.peers = {name: Peer(name, url, max(1.0, config.partition_after)) for name, url in config.peers.items()}
        self.count = len(self.peers) + 1
        self.share = config.on_partition == "share"
        self.partitioned = False
        self.tags: set[str] = set()            # '{tag}' prefixes whose dirty sets are taken
        self.limits: dict[str, str] = {}       # a limit's key prefix -> its label (route:limit name)
        self.known: dict[bytes, tuple] = {}    # key -> (w, c, p, ttl_ms, seen): our last-known components
        self.rates: dict[str, float] = {}      # our admissions per second per limit label
        self.bounds: dict[str, float] = {}
        self.task = None
        self.escrow: dict[str, EscrowLimit] = {}   # an escrow limit's key prefix -> it
        self.escrow_tags: set[str] = set()
        self.borrowing: set = set()                # (key, peer) with a loan asked and not answered yet
        self.escrow_task = None
        for peer in self.peers:
            stats.declare_gauge("region_peer_up", (("peer", peer),), 1)
            stats.declare_gauge("region_sync_lag_seconds", (("peer", peer),))

    def watch(self, prefix: str, limit_prefix: str, label: str) -> None:
        """A route's global limit: its tag's dirty set is taken, its admissions rated."""
        self.tags.add(prefix[:prefix.index("}") + 1])
        self.limits[limit_prefix] = label
        self.stats.declare_gauge("region_overadmission_bound", (("limit", label),), 1)

    def share_of(self, limit: int, region: str) -> int:
        """A region's share of an escrow limit: the limit split evenly, the remainder to the
        first regions by name, so every region computes the same shares and they add up to it."""
        names = sorted([self.name, *self.peers])
        i = names.index(region)
        return limit // len(names) + (1 if i < limit % len(names) else 0)

    def watch_escrow(self, prefix: str, limit_prefix: str, label: str, limit: int, window: float) -> None:
        """A route's escrow limit: its keys asked for are taken each round and borrowed for."""
        self.escrow_tags.add(prefix[:prefix.index("}") + 1])
        shares = {name: self.share_of(limit, name) for name in [self.name, *self.peers]}
        self.escrow[limit_prefix] = EscrowLimit(label, limit, window, shares)
        for peer in self.peers:
            self.stats.declare("region_escrow_borrowed", (("limit", label), ("peer", peer)))

    @property
    def share_now(self) -> bool:
        return self.share and self.partitioned

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._every_interval(self.sync, "region sync"))
            # Its own loop: a slow push to a distant peer must not hold back a loan.
            self.escrow_task = asyncio.get_running_loop().create_task(self._every_interval(self.borrow, "escrow round"))

    def close(self) -> None:
        for task in (self.task, self.escrow_task):
            if task is not None:
                task.cancel()
        for peer in self.peers.values():
            asyncio.get_event_loop().create_task(peer.store.close())

    async def _every_interval(self, round_, what: str) -> None:
        """`await round_()` every sync_interval, for as long as the gateway runs."""
        interval = self.config.sync_interval
        while True:
            started = time.monotonic()
            try:
                await round_()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - never stops: the next interval tries again
                log.exception("%s failed", what)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def borrow(self) -> None:
        """One escrow round: ask the peers for a loan for each key whose projected demand
        this window exceeds what this region holds (loans run as tasks, one per key and peer)."""
        loop = asyncio.get_running_loop()
        for tag in self.escrow_tags:
            try:
                flat = await asyncio.wait_for(self.store.run(TAKE_ESCROW, [f"{tag}:escrow"], []), 1.0)
            except STORE_ERRORS:
                continue   # our own store is down: the limiter's store_failure mode is in force
            now = int(flat[0])
            for i in range(1, len(flat), 7):
                key = flat[i]
                limit = _by_prefix(self.escrow, key)
                if limit is None:
                    continue
                w, c, g, lent, d, q = (int(x) for x in flat[i + 1:i + 7])
                window = limit.window_ms
                if w != now // window:
                    continue   # a window that is over: loans are for the current one
                elapsed = max(1, now - w * window)
                rate = q / window
                if elapsed * 10 >= window and d / elapsed > rate:
                    rate = d / elapsed
                needed = min(limit.limit, d + rate * (window - elapsed))
                short = int(needed - (limit.shares[self.name] + g - lent) + 0.999)
                if short <= 0:
                    continue
                for peer in self.peers.values():
                    if (key, peer.name) not in self.borrowing:
                        self.borrowing.add((key, peer.name))
                        loop.create_task(self._loan(peer, key, limit, w, short))

    async def _loan(self, peer: Peer, key: bytes, limit: EscrowLimit, w: int, asked: int) -> None:
        try:
            async with asyncio.timeout(max(1.0, limit.window_ms / 1000)):
                index, total = await peer.store.run(
                    LEND, [key], [self.name, w, asked, limit.shares[peer.name], limit.window_ms, ESCROW_HEADROOM])
                if index == w and total > 0:
                    added = await self.store.run(APPLY, [key], [peer.name, w, total])
                    if added:
                        self.stats.inc("region_escrow_borrowed", (("limit", limit.label), ("peer", peer.name)), added)
        except STORE_ERRORS:
            pass   # nothing lent, or lent and not counted here: under the limit either way
        finally:
            self.borrowing.discard((key, peer.name))

    async def sync(self) -> None:
        now = time.time()
        changed = await self._take_dirty(now)
        # Our admission rates per limit since the last sync (for the peers' bounds).
        interval = self.config.sync_interval
        gained: dict[str, int] = {}
        for key, (w, c, _p, _ttl, _) in changed.items():
            before = self.known.get(key)
            delta = c - before[1] if before is not None and before[0] == w else c
            label = _by_prefix(self.limits, key)
            if label is not None and delta > 0:
                gained[label] = gained.get(label, 0) + delta
        self.known.update(changed)
        self.rates = {label: n / interval for label, n in gained.items()}
        for key in [k for k, v in self.known.items() if now - v[4] > _FORGET_AFTER]:
            del self.known[key]
        await asyncio.gather(*(self._push(peer, changed, now) for peer in self.peers.values()))
        await self._read_heartbeats(now)

    async def _take_dirty(self, now: float) -> dict:
        changed = {}
        for tag in self.tags:
            try:
                flat = await asyncio.wait_for(self.store.run(TAKE_DIRTY, [f"{tag}:dirty"], []), 1.0)
            except STORE_ERRORS:   # RedisError, OSError and timeouts
                continue   # our own store is down: the limiter's store_failure mode is in force
            for i in range(0, len(flat), 5):
                key = flat[i]
                changed[key] = (int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]), int(flat[i + 4]), now)
        return changed

    async def _push(self, peer: Peer, changed: dict, now: float) -> None:
        entries = self.known if peer.full else changed
        by_tag: dict[bytes, list] = {}
        for key, (w, c, p, ttl, _) in entries.items():
            if ttl != -2:   # -2: the key is gone (its windows are over)
                by_tag.setdefault(key[:key.index(b"}") + 1], []).append((key, w, c, p, ttl))
        try:
            # A push is two round trips to the peer: over a long link that is most of a second.
            async with asyncio.timeout(max(1.0, self.config.sync_interval * 5, self.config.partition_after)):
                for items in by_tag.values():
                    keys = [key + b":regions" for key, *_ in items]
                    args = [self.name]
                    for _, w, c, p, ttl in items:
                        args += (w, c, p, max(ttl, 0))
                    await peer.store.run(MERGE, keys, args)
                beat = orjson.dumps({"t": now, "rates": self.rates})
                await peer.store.set(HEARTBEAT + self.name, beat, ttl=max(60.0, self.config.partition_after * 10))
        except STORE_ERRORS as e:
            if peer.up:
                log.warning("region %s: cannot write to peer %s (%s)", self.name, peer.name, type(e).__name__)
            peer.up = False
            peer.full = True
            return
        if not peer.up:
            log.warning("region %s: peer %s answers again (sent every known count)", self.name, peer.name)
        peer.up = True
        peer.full = False
        peer.last_push = now

    async def _read_heartbeats(self, now: float) -> None:
        """How fresh our view of each peer is, from the heartbeats they left in our store."""
        partitioned = False
        gauges = self.stats.gauges
        for peer in self.peers.values():
            try:
                raw = await asyncio.wait_for(self.store.get(HEARTBEAT + peer.name), 1.0)
            except STORE_ERRORS:
                raw = None
            if raw:
                beat = orjson.loads(raw)
                peer.lag = max(0.0, now - beat["t"])
                peer.rates = beat.get("rates", {})
            else:
                peer.lag = None   # nothing from it (yet, or its heartbeat expired)
            stale = peer.lag is None or peer.lag > self.config.partition_after
            partitioned = partitioned or stale or not peer.up
            gauges[("region_peer_up", (("peer", peer.name),))] = 1 if peer.up and not stale else 0
            gauges[("region_sync_lag_seconds", (("peer", peer.name),))] = peer.lag if peer.lag is not None else -1
        if partitioned != self.partitioned:
            log.warning("region %s: %s", self.name, "partitioned: global limits at this region's share"
                        if partitioned and self.share else "partitioned" if partitioned else "every peer in step")
        self.partitioned = partitioned
        # Over-admission bound per limit: sum over peers of (their admission rate x their lag) + 1.
        for label in self.limits.values():
            bound = 1.0 + sum(peer.rates.get(label, 0.0) * (peer.lag or 0.0) for peer in self.peers.values())
            self.bounds[label] = bound
            gauges[("region_overadmission_bound", (("limit", label),))] = round(bound, 3)

    def status(self) -> dict:
        return {"name": self.name, "on_partition": self.config.on_partition, "partitioned": self.partitioned,
                "in_force": "share" if self.share_now else "global",
                "peers": {p.name: {"up": p.up, "lag_seconds": None if p.lag is None else round(p.lag, 3),
                                   "last_push": p.last_push or None} for p in self.peers.values()},
                "overadmission_bound": {k: round(v, 3) for k, v in self.bounds.items()},
                "escrow_shares": {e.label: e.shares for e in self.escrow.values()}}


def _by_prefix(table: dict, key: bytes):
    """What `table` (a limit's key prefix -> anything) holds for the limit `key` belongs to, or None."""
    text = key.decode("latin-1")
    for prefix, value in table.items():
        if text.startswith(prefix):
            return value
    return None
