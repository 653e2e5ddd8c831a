"""The cache's request side: a route's `CachePolicy` and the `Fill` of a miss (see __init__).

Compiled with Cython (policy.pxd): `CachePolicy` is an extension type
there, so a hit is answered from C.
"""
from __future__ import annotations

import asyncio
import hashlib
from time import time
from typing import TYPE_CHECKING

from ...pipeline import Policy, Reply
from ...registry import noted_index
from ...store.guard import STORE_ERRORS
from .rules import NOT_MODIFIED_FIELDS, ResponseFacts, lifetime, not_modified
from .schema import RouteCache
from .storage import KEY_PREFIX, Entry

if TYPE_CHECKING:
    from . import ResponseCache

_RESULTS = ("HIT", "MISS", "BYPASS", "STALE")
_MEMORY_PREFIX = KEY_PREFIX.encode()
_AGE_LINES = [b"age: %d\r\n" % i for i in range(3600)]   # formatted once, not per hit
_STATUS_LINES = {r: b"x-cache-status: %s\r\n" % r.encode() for r in _RESULTS}


def _not_modified_lines(lines) -> list:
    """The header lines a 304 repeats (RFC 9110 §15.4.5): from a stored entry or an upstream head."""
    return [line for line in lines if line[:line.find(b":")].strip().lower() in NOT_MODIFIED_FIELDS]


class Flight:
    """The one upstream fetch of a key in this process, and the requests waiting for it."""

    __slots__ = ("waiters",)

    def __init__(self):
        self.waiters: list[asyncio.Future] = []


class Fill:
    """Attached to an exchange that fetches a cacheable miss: sees the upstream's
    response as it is relayed and stores it when complete and storable."""

    __slots__ = ("policy", "primary", "key", "flight", "fallback", "shared_only", "lock", "done_set",
                 "chunks", "size", "facts", "life", "status", "if_none_match", "if_modified_since", "ended")

    def __init__(self, policy, exchange, primary, key, flight, fallback, shared_only, lock, done_set=None):
        self.policy = policy
        self.primary = primary
        self.key = key
        self.flight = flight
        self.fallback = fallback      # an entry within stale_if_error, served if the upstream fails
        self.shared_only = shared_only
        self.lock = lock
        self.done_set = done_set      # the refreshing set of a background refresh
        self.chunks = None
        self.size = 0
        self.facts = self.life = None
        self.status = 0
        self.ended = False
        # Conditionals are not forwarded: the upstream answers in full so that the
        # entry can be stored, and the gateway answers the condition itself.
        self.if_none_match = self.if_modified_since = None
        if exchange.noted_any(policy.conditionals):
            self.if_none_match = exchange.header("if-none-match")
            self.if_modified_since = exchange.header("if-modified-since")
        if self.if_none_match is not None or self.if_modified_since is not None:
            exchange.remove_header("if-none-match")
            exchange.remove_header("if-modified-since")

    # Called by the exchange --------------------------------------------------------
    def head(self, exchange, status: int, content_length: bytes | None) -> Reply | None:
        """The upstream's head arrived (exchange.response_headers as the upstream sent them)."""
        now = time()
        if status >= 500:
            stale = self.substitute(exchange, now)
            if stale is not None:
                return stale
        facts = ResponseFacts(exchange.response_headers)
        life, _why = lifetime(status, facts, self.policy.config, now)
        settings = self.policy.cache.settings
        if life is None or (self.shared_only and not life.shared) or exchange.method == b"HEAD" \
                or (content_length is not None and int(content_length) > settings.max_entry_size):
            self.end(None, status >= 500)
            return None
        self.facts, self.life, self.status, self.chunks = facts, life, status, []
        if status == 200 and not_modified(self.if_none_match, self.if_modified_since, facts.etag,
                                          facts.last_modified):
            exchange.not_modified(_not_modified_lines(exchange.response_headers))
        return None

    def body(self, chunk: bytes) -> None:
        chunks = self.chunks
        if chunks is not None:
            self.size += len(chunk)
            if self.size > self.policy.cache.settings.max_entry_size:
                self.end(None, False)
            else:
                chunks.append(chunk)

    def complete(self, exchange) -> None:
        """The whole response went through: store it."""
        if self.chunks is None or self.ended:
            return
        now = time()
        policy, facts, life = self.policy, self.facts, self.life
        entry = Entry(self.status, tuple(facts.lines), b"".join(self.chunks), now, facts.age, now + life.fresh,
                      now + life.fresh + life.while_revalidate, now + life.fresh + life.if_error, life.shared,
                      facts.etag, facts.last_modified, policy.route_name, exchange.path.decode("latin-1"),
                      tuple(facts.surrogate_keys))
        key, marker = self.primary, None
        extra = [name for name in facts.vary if name not in policy.vary_names]
        if extra:
            # The response varies on request headers the route did not name: a
            # marker at the primary key names them, the entry lives at its variant.
            marker = Entry(vary=tuple(extra), fresh_until=entry.expires_at, route=policy.route_name)
            key = policy.variant_key(self.primary, marker.vary, exchange)
        policy.cache.store(self.primary, key, entry, marker, self.lock, self.key, now)
        self.lock = None
        self.end(entry, False)

    def finished(self, exchange) -> None:
        if not self.ended:
            self.end(None, exchange.status >= 500 or exchange.status == 0)

    def substitute(self, exchange, now: float) -> Reply | None:
        """stale_if_error: the stored response instead of an upstream failure."""
        fallback = self.fallback
        if fallback is None or now >= fallback.error_until:
            return None
        self.end(None, True)
        return self.policy.hit(exchange, fallback, now, "STALE")

    def end(self, entry: Entry | None, failed: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.chunks = None
        cache = self.policy.cache
        cache.end_flight(self.key, self.flight, entry, failed)
        if self.lock is not None:
            cache.release(self.key, self.lock)
            self.lock = None
        if self.done_set is not None:
            self.done_set.discard(self.key)


class CachePolicy(Policy):
    __slots__ = ("cache", "route_name", "vary_names", "consumer_scope", "route_bytes", "memory", "conditionals",
                 "range", "cookie", "authorization")

    phase = "cache"
    Config = RouteCache
    outcome = "cache"
    outcome_metric = "cache_results"

    def __init__(self, config: RouteCache, context, *, cache: ResponseCache):
        super().__init__(config, context)
        self.cache = cache
        self.route_name = context.route_name
        self.vary_names = tuple(h.lower() for h in config.vary)
        self.consumer_scope = config.scope == "consumer"
        self.route_bytes = self.route_name.encode()
        self.memory = cache.memory
        # Where the exchange keeps the headers this policy reads (registry.noted_index).
        self.conditionals = tuple(noted_index(n) for n in ("range", "if-none-match", "if-modified-since"))
        self.range = noted_index("range")
        self.cookie = noted_index("cookie")
        self.authorization = noted_index("authorization")
        context.stats.declare_outcomes(self.route_name, self.outcome_metric, _RESULTS)   # at 0 from the start

    # --- keys -----------------------------------------------------------------------------
    def primary_key(self, exchange) -> str | bytes:
        """Method class (GET and HEAD share), route, host, path, query in a stable order,
        the route's vary headers, and the consumer for scope: consumer.

        In Redis the key is that text hashed (BLAKE2b-128) under the versioned
        prefix; in the memory cache it is the text itself (prefixed the same
        way): the dict hashes it, and equal keys are the only matches.
        """
        query = exchange.query
        if query.find(b"&") >= 0:   # not `in`: bytes.__contains__ first tries the needle as an int (an exception)
            query = b"&".join(sorted(query[1:].split(b"&")))
        parts = [self.route_bytes, exchange.host.lower(), exchange.path, query]
        for name in self.vary_names:
            parts.append((exchange.header(name) or "").encode("latin-1"))
        if self.consumer_scope:
            identity = exchange.identity
            parts.append(identity.consumer.encode() if identity is not None else b"")
        raw = b"\n".join(parts)
        if self.memory:
            return _MEMORY_PREFIX + raw
        return KEY_PREFIX + hashlib.blake2b(raw, digest_size=16).hexdigest()

    def variant_key(self, primary, names: tuple, exchange):
        values = "\n".join(" ".join((exchange.header(n) or "").lower().split()) for n in names).encode("latin-1")
        if self.memory:
            return primary + b"\0" + values
        return primary + ":" + hashlib.blake2b(values, digest_size=8).hexdigest()

    # --- the request side -----------------------------------------------------------------
    def bypass(self, exchange) -> None:
        exchange.remember(self.slot, "BYPASS")   # the outcome: counted by Stats.fold, like every cache result
        return None

    def on_request(self, exchange):
        method = exchange.method
        if (method != b"GET" and method != b"HEAD") or exchange.noted_value(self.range) is not None:
            return self.bypass(exchange)
        shared_only = False
        noted = exchange.noted
        credentials = noted is not None and noted[self.authorization] is not None
        if (credentials or (noted is not None and noted[self.cookie] is not None)) and not (
                self.consumer_scope and exchange.identity is not None):   # else the consumer is in the key
            if self.consumer_scope and credentials:
                return self.bypass(exchange)   # credentials that identified no consumer: never shared
            # RFC 9111 §3.5: only responses marked public or s-maxage serve requests with
            # credentials; cookies are treated alike (Varnish's default): they often carry a session.
            shared_only = True
        key = self.primary_key(exchange)
        cache = self.cache
        if cache.memory:
            now = time()
            storage = cache.storage
            primary = key
            entry = storage.get(key, now)
            if entry is not None and entry.vary is not None:
                key = self.variant_key(key, entry.vary, exchange)
                entry = storage.get(key, now)
            return self.decide(exchange, primary, key, entry, shared_only, now)
        if cache.guard.open:
            return self.bypass(exchange)
        return cache.lookup(self, exchange, key, shared_only)

    async def lookup_redis(self, exchange, primary: str, shared_only: bool, marker: Entry):
        """The variant of a Vary marker a batch found at `primary`: a lookup of its own."""
        cache = self.cache
        try:
            key, entry = await cache.fetch(primary, self, exchange, marker)
        except STORE_ERRORS as e:
            cache.failed(e)
            return self.bypass(exchange)
        result = self.decide(exchange, primary, key, entry, shared_only, time())
        if result is not None and result.__class__ is not Reply:
            result = await result
        return result

    def decide(self, exchange, primary, key, entry, shared_only, now):
        """Serve the entry, or set up the fetch: returns a Reply, None, or an awaitable."""
        if entry is not None and (entry.shared or not shared_only):
            if now < entry.fresh_until:
                return self.hit(exchange, entry, now, "HIT")
            if now < entry.stale_until and not shared_only:
                self.cache.refresh(self, exchange, key, primary)
                return self.hit(exchange, entry, now, "STALE")
        else:
            entry = None
        fallback = entry if entry is not None and now < entry.error_until else None
        exchange.remember(self.slot, "MISS")
        if shared_only or exchange.method == b"HEAD":
            # Not shared with others: a HEAD fetch has no body to store, and a
            # request with credentials may be personal.
            exchange.add_observer(Fill(self, exchange, primary, key, None, fallback, shared_only, None))
            return None
        cache = self.cache
        flight = cache.flights.get(key)
        if flight is not None:
            return self._wait(exchange, flight, fallback)
        flight = cache.flights[key] = Flight()
        if cache.memory or cache.guard.open:
            exchange.add_observer(Fill(self, exchange, primary, key, flight, fallback, False, None))
            return None
        return self._fill_fleet(exchange, primary, key, flight, fallback)

    async def _wait(self, exchange, flight: Flight, fallback):
        """Another request of this process is fetching the key: take its entry."""
        waiter = asyncio.get_running_loop().create_future()
        flight.waiters.append(waiter)
        try:
            entry, failed = await asyncio.wait_for(waiter, self.cache.settings.lock_timeout)
        except asyncio.TimeoutError:
            entry, failed = None, False
        now = time()
        if entry is not None:
            return self._hit_instead(exchange, entry, now)
        if failed and fallback is not None and now < fallback.error_until:
            return self._hit_instead(exchange, fallback, now, "STALE")
        return None   # not storable (or too slow): fetch it ourselves, uncached

    async def _fill_fleet(self, exchange, primary, key, flight, fallback):
        """With Redis, the first instance to take the key's lock fetches it; the others
        poll for the entry up to lock_timeout, then fetch it themselves."""
        cache = self.cache
        lock = await cache.try_lock(key)
        if lock is not None:
            # Looked up before the lock was taken: another instance may have stored the
            # entry and released its lock in between. Its store precedes its unlock, so
            # a second look under the lock settles it (and the upstream is not asked twice).
            try:
                entry = await self._fresh(primary, exchange, key, flight)
            except STORE_ERRORS as e:
                cache.failed(e)
                entry = None
            if entry is not None:
                cache.release(key, lock)
                return self._hit_instead(exchange, entry, time())
        elif not cache.guard.open:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + cache.settings.lock_timeout
            pause = 0.005
            while loop.time() < deadline and not exchange.finished:
                await asyncio.sleep(pause)
                pause = min(0.05, pause * 2)
                try:
                    entry = await self._fresh(primary, exchange, key, flight)
                except STORE_ERRORS as e:
                    cache.failed(e)
                    break
                if entry is not None:
                    return self._hit_instead(exchange, entry, time())
        exchange.add_observer(Fill(self, exchange, primary, key, flight, fallback, False, lock))
        return None

    async def _fresh(self, primary, exchange, key, flight):
        """A fresh entry stored by another instance (its flight here ends with it), or None;
        raises STORE_ERRORS."""
        _, entry = await self.cache.fetch(primary, self, exchange)
        if entry is None or time() >= entry.fresh_until:
            return None
        self.cache.end_flight(key, flight, entry, False)
        return entry

    def _hit_instead(self, exchange, entry, now, label="HIT"):
        # A MISS when it started waiting: hit() relabels it (metrics count the final label).
        return self.hit(exchange, entry, now, label)

    def hit(self, exchange, entry: Entry, now: float, label: str) -> Reply:
        exchange.remember(self.slot, label)
        seconds = int(now - entry.stored_at + entry.age)
        age = _AGE_LINES[seconds] if 0 <= seconds < 3600 else b"age: %d\r\n" % max(0, seconds)
        if exchange.noted_any(self.conditionals) and entry.status == 200 and not_modified(
                exchange.header("if-none-match"), exchange.header("if-modified-since"), entry.etag, entry.last_modified):
            reply = Reply(304)
            reply.lines = _not_modified_lines(entry.lines)
            reply.lines.append(age)
            return reply
        reply = Reply(entry.status, entry.body)
        reply.lines = [entry.block, age]   # the stored lines, joined once
        return reply

    # --- the response side -----------------------------------------------------------------
    def on_response(self, exchange) -> None:
        status = exchange.recall(self.slot)
        if status is not None:
            exchange.response_headers.append(_STATUS_LINES[status])
