"""Consumers and API keys managed at run time (docs/auth.md, "Consumers at run time").

`ConsumerDirectory` is the auth kind's per-worker service. It answers the admin
listener's `/consumers` calls (records.py holds the store's side) and, on the
request path, finds the consumer of an API key that the config file does not
know: one local dictionary lookup when cached; on a miss, one question to the
store (concurrent misses of one key share it), whose answer is cached, negative
answers included.

How long an answer is trusted: with Redis, every instance subscribes to the
change channel, and each change drops what it touched from every cache at once;
while subscribed, an answer is kept `TRUSTED_TTL`. Without the subscription (it
dropped, or Redis Cluster) answers are kept `SHORT_TTL`, so a revoked key is
refused fleet-wide within a second either way. With the memory store the
changes are made in this process and dropped from its cache directly.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ...config.schema import ListOf
from ...identity import Identity
from ..ratelimit.schema import RateLimit
from . import records
from .admin import ConsumerAdmin
from .providers import AuthFailure, StoreUnavailable

log = logging.getLogger("tollhouse.auth")

TRUSTED_TTL = 30.0    # seconds an answer is kept while the change channel is followed
SHORT_TTL = 1.0       # ... while it is not; and a negative answer, always
USED_EVERY = 60.0     # a key's "last used" is written at most this often (per worker)
FLUSH_EVERY = 5.0     # how often pending "last used" times are written, off the request path
SESSIONS_KEPT = 100000   # sessions cached per worker (then the cache starts over)

_INVALID = AuthFailure("invalid_key", "the API key is not valid")


def identity_of(consumer: dict, provider: str) -> Identity:
    """The Identity of a runtime consumer's record."""
    identity = Identity(consumer["id"], consumer.get("tier") or None, frozenset(consumer.get("scopes", ())),
                        frozenset(consumer.get("roles", ())), provider=provider, credential="api_key")
    limits = consumer.get("rate_limits")
    if limits:
        errors: list = []
        parsed = ListOf(RateLimit).validate(limits, "rate_limits", None, errors)
        if not errors:
            identity.set_rate_limits(tuple(parsed))
    return identity


class ConsumerDirectory:
    """One per worker (see the module's doc)."""

    def __init__(self, config, store, worker):
        self.store = store
        self.shared = store.kind != "memory"
        self.loop = worker.loop
        self.config_file = worker.config_path or "the embedded config"
        self.cache: dict[bytes, tuple] = {}   # SHA-256 digest -> (Identity | None, until, key id)
        self.sessions: dict[str, list] = {}   # session id -> [record | None, until, what oidc.py made of it]
        self.fetching: dict[bytes, asyncio.Future] = {}
        self.generation = 0           # bumped by every change seen: an answer fetched across one is not kept
        self.following = False        # subscribed to the change channel (Redis)
        self.used: dict[str, float] = {}      # key id -> when last written as used
        self.pending_used: dict[str, float] = {}
        self.tasks: list[asyncio.Task] = []
        self.api = ConsumerAdmin(self)
        self.reconfigure(config)

    def reconfigure(self, config) -> "ConsumerDirectory":
        self.seed = {c.id: c for c in config.consumers}
        self.tiers = config.tiers
        self.forget_all()
        return self

    def start(self, config) -> None:
        """The change channel and the last-used writer: only for a config whose providers read
        this cache (api_key, oidc); the admin API works without them."""
        if self.tasks or config.auth is None or not any(p.type in ("api_key", "oidc")
                                                        for p in config.auth.providers.values()):
            return
        self.tasks.append(self.loop.create_task(self._flush_used_forever()))
        if self.shared and self.store.kind == "redis":
            self.tasks.append(self.loop.create_task(self._follow()))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    # --- the request path ---------------------------------------------------------------
    def lookup(self, digest: bytes, provider: str, now: float):
        """The Identity of a runtime key (from the cache), AuthFailure raised, or an
        awaitable of the answer (a miss: the store is asked)."""
        hit = self.cache.get(digest)
        if hit is not None and hit[1] > now:
            identity = hit[0]
            if identity is None:
                raise _INVALID
            if now - self.used.get(hit[2], 0.0) >= USED_EVERY:
                self.used[hit[2]] = self.pending_used[hit[2]] = now
            return identity
        return self._fetch(digest, provider)

    async def _fetch(self, digest: bytes, provider: str):
        pending = self.fetching.get(digest)
        if pending is None:
            pending = self.fetching[digest] = self.loop.create_future()
            try:
                pending.set_result(await self._ask(digest, provider))
            except BaseException as e:  # noqa: BLE001 - handed to every waiter
                pending.set_exception(e)
            finally:
                del self.fetching[digest]
        result = await asyncio.shield(pending)
        if result is None:
            raise _INVALID
        return result

    async def _ask(self, digest: bytes, provider: str) -> Identity | None:
        generation = self.generation
        try:
            raw = await self.store.get(records.hash_key(digest.hex()))
            record = orjson.loads(raw) if raw else None
            consumer = None
            if record is not None:
                raw = await self.store.get(records.consumer_key(record["consumer"]))
                consumer = orjson.loads(raw) if raw else None
        except Exception as e:  # noqa: BLE001 - any store failure: the caller cannot be judged
            raise StoreUnavailable(e) from None
        now = time.time()
        expires = record.get("expires") if record is not None else None
        identity = None
        if consumer is not None and (not expires or expires > now):
            identity = identity_of(consumer, provider)
        if generation == self.generation:
            trust = TRUSTED_TTL if self.following or not self.shared else SHORT_TTL
            until = now + (trust if identity is not None else SHORT_TTL)
            if expires:
                until = min(until, expires)
            key_id = record["key_id"] if record is not None else ""
            self.cache[digest] = (identity, until, key_id)
            if identity is not None:
                self.used[key_id] = self.pending_used[key_id] = now
        return identity

    # --- browser sessions (policies/auth/oidc.py) ----------------------------------------
    def session(self, session_id: str, now: float):
        """A session's cache entry, [record or None, until, made], or an awaitable of it."""
        entry = self.sessions.get(session_id)
        if entry is not None and entry[1] > now:
            return entry
        return self._fetch_session(session_id)

    async def _fetch_session(self, session_id: str) -> list:
        generation = self.generation
        try:
            raw = await self.store.get(records.session_key(session_id))
        except Exception as e:  # noqa: BLE001 - the caller cannot be judged
            raise StoreUnavailable(e) from None
        record = orjson.loads(raw) if raw else None
        trust = TRUSTED_TTL if record is not None and (self.following or not self.shared) else SHORT_TTL
        entry = [record, time.time() + trust, None]
        if generation == self.generation:
            if len(self.sessions) >= SESSIONS_KEPT:
                self._drop_sessions()
            self.sessions[session_id] = entry
        return entry

    async def save_session(self, session_id: str, record: dict, ttl: float) -> None:
        await self.store.run(records.SAVE_SESSION, [records.session_key(session_id),
                                                    records.sessions_key(record["consumer"])],
                             [session_id, orjson.dumps(record), max(1, int(ttl * 1000))])
        await self._changed({"sessions": [session_id]})

    async def replace_session(self, session_id: str, record: dict) -> bool:
        kept = await self.store.run(records.REPLACE_SESSION, [records.session_key(session_id)], [orjson.dumps(record)])
        await self._changed({"sessions": [session_id]})
        return bool(kept)

    async def end_session(self, session_id: str, consumer: str) -> None:
        await self.store.run(records.END_SESSION, [records.session_key(session_id), records.sessions_key(consumer)],
                             [session_id])
        await self._changed({"sessions": [session_id]})

    # --- changes ------------------------------------------------------------------------
    def forget(self, change: dict) -> None:
        """Drop what a change touched: its keys (by SHA-256) and its consumer's answers."""
        self.generation += 1
        for sha in change.get("hashes", ()):
            self.cache.pop(bytes.fromhex(sha), None)
        for session_id in change.get("sessions", ()):
            entry = self.sessions.pop(session_id, None)
            if entry is not None:
                entry[1] = 0.0   # dead: a policy's shortcut holding it looks again
        consumer = change.get("consumer")
        if consumer:
            for digest in [d for d, hit in self.cache.items() if hit[0] is not None and hit[0].consumer == consumer]:
                del self.cache[digest]

    def forget_all(self) -> None:
        self.generation += 1
        self.cache.clear()
        self._drop_sessions()

    def _drop_sessions(self) -> None:
        for entry in self.sessions.values():
            entry[1] = 0.0   # dead: a policy's shortcut holding it looks again
        self.sessions.clear()

    async def _changed(self, change: dict) -> None:
        """A change made here: dropped here, and with Redis announced to the fleet."""
        self.forget(change)
        if self.shared:
            try:
                await self.store.command("PUBLISH", records.CHANNEL, orjson.dumps(change))
            except Exception as e:  # noqa: BLE001 - the others fall back on their short cache
                log.warning("consumers: a change could not be announced (%s); other instances see it within %gs",
                            e, SHORT_TTL)

    async def _follow(self) -> None:
        """Redis: the change channel, followed for as long as this worker lives."""
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(self.store.url, socket_connect_timeout=self.store.timeout)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(records.CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.forget_all()   # what was cached while not following may be stale
                        self.following = True
                    elif message["type"] == "message":
                        self.forget(orjson.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - followed again after a pause
                log.debug("consumers: change channel lost (%s)", e)
            finally:
                self.following = False
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(0.5)

    async def _flush_used_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush_used()

    async def flush_used(self) -> None:
        if not self.pending_used:
            return
        pending, self.pending_used = self.pending_used, {}
        args = []
        for key_id, at in pending.items():
            args += [key_id, f"{at:.3f}"]
        try:
            await self.store.run(records.TOUCH, [records.USED], args)
        except Exception as e:  # noqa: BLE001 - a lost "last used" is not worth a retry loop
            log.debug("consumers: last-used times not written (%s)", e)

    # --- the admin API ------------------------------------------------------------------
    def admin(self, method: str, path: str, body: str, request: dict | None = None):
        """`/consumers...` (contract §14), answered by the admin half (admin.py)."""
        return self.api.admin(method, path, body, request)
