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
import base64
import hashlib
import logging
import os
import time
from urllib.parse import parse_qsl

import orjson

from ...config.loader import ConfigError
from ...config.schema import ListOf
from ...identity import Identity
from ..ratelimit.schema import RateLimit
from . import records
from .providers import AuthFailure
from .schema import ListQuery, NewKey, RuntimeConsumer

log = logging.getLogger("tollhouse.auth")

TRUSTED_TTL = 30.0    # seconds an answer is kept while the change channel is followed
SHORT_TTL = 1.0       # ... while it is not; and a negative answer, always
USED_EVERY = 60.0     # a key's "last used" is written at most this often (per worker)
FLUSH_EVERY = 5.0     # how often pending "last used" times are written, off the request path
SESSIONS_KEPT = 100000   # sessions cached per worker (then the cache starts over)

_INVALID = AuthFailure("invalid_key", "the API key is not valid")


class StoreUnavailable(AuthFailure):
    """The store could not be asked: the caller gets 503, not 401 (the key may be fine)."""

    def __init__(self, error: BaseException):
        super().__init__("store_unavailable", f"the consumer store is unavailable ({type(error).__name__})")


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


def _schema_dict(value) -> dict:
    return {name: getattr(value, field.name) for name, field in type(value)._fields.items()}


def _validate(schema, document) -> tuple:
    """(instance, None) or (None, (400, answer naming the field))."""
    errors: list[ConfigError] = []
    value = schema.validate(document, "", None, errors)
    if errors:
        return None, (400, {"error": str(errors[0]), "errors": [str(e) for e in errors]})
    return value, None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _body(body: str) -> tuple:
    """(a JSON object, None) or (None, (400, why))."""
    try:
        document = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as e:
        return None, (400, {"error": f"the body is not JSON: {e}"})
    if not isinstance(document, dict):
        return None, (400, {"error": "the body must be a JSON object"})
    return document, None


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
        self.reconfigure(config)

    def reconfigure(self, config) -> "ConsumerDirectory":
        self.seed = {c.id: c for c in config.consumers}
        self.tiers = config.tiers
        self.forget_all()
        return self

    def start(self, config) -> None:
        if self.tasks:
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
    async def admin(self, method: str, path: str, body: str, request: dict | None = None):
        """`/consumers...` (contract §14): (status, JSON-able); None from a worker that is
        not the writer of a shared store (another worker makes the change once)."""
        request = request or {}
        if not request.get("writer", True):
            return None
        parts = path.strip("/").split("/")
        try:
            if len(parts) == 1:
                if method == "GET":
                    return await self.list_consumers(request.get("query", ""))
                return await self.create_consumer(body, request)
            consumer_id = parts[1]
            if len(parts) == 2:
                if method == "GET":
                    return await self.read_consumer(consumer_id)
                if method == "PATCH":
                    return await self.change_consumer(consumer_id, body, request)
                return await self.remove_consumer(consumer_id)
            if len(parts) == 3:
                if method == "GET":
                    return await self.list_keys(consumer_id)
                return await self.create_key(consumer_id, body, request)
            return await self.revoke_key(consumer_id, parts[3])
        except StoreUnavailable as e:
            return 503, {"error": e.detail}
        except Exception as e:  # noqa: BLE001 - the store failed mid-call
            if isinstance(e, (KeyError, ValueError, TypeError)):
                raise
            return 503, {"error": f"the store failed: {type(e).__name__}"}

    def _read_only(self, consumer_id: str):
        return 409, {"error": f"consumer {consumer_id!r} is defined in {self.config_file} and is read-only here"}

    async def _consumer(self, consumer_id: str) -> dict | None:
        raw = await self.store.get(records.consumer_key(consumer_id))
        return orjson.loads(raw) if raw else None

    def _seed_view(self, c) -> dict:
        return {"id": c.id, "tier": c.tier, "scopes": list(c.scopes), "roles": list(c.roles),
                "rate_limits": [_schema_dict(r) for r in c.rate_limits], "metadata": {}, "source": "file"}

    def _check_tier(self, tier: str):
        if tier and self.tiers and tier not in self.tiers:
            return 400, {"error": f"tier: no tier named {tier!r} (tiers: {', '.join(sorted(self.tiers))})"}
        return None

    async def create_consumer(self, body: str, request: dict):
        document, error = _body(body)
        if error:
            return error
        value, error = _validate(RuntimeConsumer, document)
        if error:
            return error
        error = self._check_tier(value.tier)
        if error:
            return error
        if value.id in self.seed:
            return self._read_only(value.id)
        now = request.get("now", time.time())
        record = {"id": value.id, "tier": value.tier, "scopes": list(value.scopes), "roles": list(value.roles),
                  "rate_limits": document.get("rate_limits", []), "metadata": value.metadata,
                  "created": now, "updated": now}
        made = await self.store.run(records.CREATE_CONSUMER, [records.consumer_key(value.id), records.ALL],
                                    [value.id, orjson.dumps(record)])
        if not made:
            return 409, {"error": f"a consumer {value.id!r} exists"}
        await self._changed({"consumer": value.id})
        return 201, {**record, "source": "admin"}

    async def read_consumer(self, consumer_id: str):
        seed = self.seed.get(consumer_id)
        if seed is not None:
            return 200, self._seed_view(seed)
        record = await self._consumer(consumer_id)
        if record is None:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        return 200, {**record, "source": "admin"}

    async def change_consumer(self, consumer_id: str, body: str, request: dict):
        if consumer_id in self.seed:
            return self._read_only(consumer_id)
        document, error = _body(body)
        if error:
            return error
        if "id" in document and document["id"] != consumer_id:
            return 400, {"error": "id: a consumer's id cannot change"}
        for name in ("created", "updated", "source"):
            if name in document:
                return 400, {"error": f"{name}: set by the gateway"}
        record = await self._consumer(consumer_id)
        if record is None:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        merged = {k: record[k] for k in ("id", "tier", "scopes", "roles", "rate_limits", "metadata") if record[k]}
        merged.update(document)
        if not merged.get("tier"):
            merged.pop("tier", None)   # no tier (a null or "" in the PATCH removes it)
        value, error = _validate(RuntimeConsumer, merged)
        if error:
            return error
        error = self._check_tier(value.tier)
        if error:
            return error
        record.update({"tier": value.tier, "scopes": list(value.scopes), "roles": list(value.roles),
                       "rate_limits": merged["rate_limits"], "metadata": value.metadata,
                       "updated": request.get("now", time.time())})
        if not await self.store.run(records.REPLACE_CONSUMER, [records.consumer_key(consumer_id)],
                                    [orjson.dumps(record)]):
            return 404, {"error": f"no consumer {consumer_id!r}"}
        await self._changed({"consumer": consumer_id})
        return 200, {**record, "source": "admin"}

    async def remove_consumer(self, consumer_id: str):
        if consumer_id in self.seed:
            return self._read_only(consumer_id)
        removed = await self.store.run(records.DELETE_CONSUMER, [
            records.consumer_key(consumer_id), records.ALL, records.keys_key(consumer_id), records.USED,
            records.sessions_key(consumer_id)], [consumer_id, records.PREFIX])
        if removed is None:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        hashes, sessions = removed
        await self._changed({"consumer": consumer_id, "hashes": [_text(h) for h in hashes],
                             "sessions": [_text(s) for s in sessions]})
        return 204, None

    async def list_consumers(self, query: str):
        """A page in id order, the file's consumers among the runtime ones; `next` is the
        cursor of the following page (None on the last)."""
        value, error = _validate(ListQuery, dict(parse_qsl(query)))
        if error:
            return error
        found: list[dict] = []
        after = value.cursor
        while after is not None and len(found) <= value.limit:
            batch = await self.store.run(records.LIST_CONSUMERS, [records.ALL], [after, value.limit, records.PREFIX])
            ids = [_text(batch[i]) for i in range(0, len(batch), 2)]
            upto = ids[-1] if len(ids) == value.limit else None   # None: the store has no more
            candidates = [{**orjson.loads(batch[i + 1]), "source": "admin"} for i in range(0, len(batch), 2)
                          if batch[i + 1]]
            candidates += [self._seed_view(c) for i, c in self.seed.items() if i > after and (upto is None or i <= upto)]
            for record in sorted(candidates, key=lambda r: r["id"]):
                if not value.tier or record["tier"] == value.tier:
                    found.append(record)
            after = upto
        page = found[:value.limit]
        return 200, {"consumers": page, "next": page[-1]["id"] if len(found) > value.limit else None}

    async def create_key(self, consumer_id: str, body: str, request: dict):
        if consumer_id in self.seed:
            return self._read_only(consumer_id)
        document, error = _body(body)
        if error:
            return error
        value, error = _validate(NewKey, document)
        if error:
            return error
        # The admin listener drew the randomness once, so every worker of a memory store
        # makes the same key (each holds its own copy).
        nonce = bytes.fromhex(request["nonce"]) if request.get("nonce") else os.urandom(40)
        key = base64.urlsafe_b64encode(nonce[:32]).rstrip(b"=").decode()
        key_id = nonce[32:40].hex()
        sha = hashlib.sha256(key.encode()).hexdigest()
        now = request.get("now", time.time())
        expires = now + value.ttl if value.ttl else None
        meta = {"id": key_id, "name": value.name, "prefix": key[:6], "created": now, "expires": expires,
                "sha256": sha}
        made = await self.store.run(records.CREATE_KEY, [
            records.consumer_key(consumer_id), records.keys_key(consumer_id), records.hash_key(sha)],
            [key_id, orjson.dumps(meta), orjson.dumps({"consumer": consumer_id, "key_id": key_id, "expires": expires}),
             int(value.ttl * 1000)])
        if not made:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        await self._changed({"hashes": [sha]})
        shown = {k: v for k, v in meta.items() if k != "sha256"}
        return 201, {**shown, "key": key, "consumer": consumer_id}

    async def list_keys(self, consumer_id: str):
        if consumer_id in self.seed:
            return 200, {"keys": [], "source": "file"}
        answer = await self.store.run(records.LIST_KEYS, [
            records.consumer_key(consumer_id), records.keys_key(consumer_id), records.USED], [])
        if not answer or not int(answer[0]):
            return 404, {"error": f"no consumer {consumer_id!r}"}
        now = time.time()
        keys = []
        for i in range(1, len(answer), 2):
            meta = orjson.loads(answer[i])
            used = answer[i + 1]
            meta.pop("sha256", None)
            meta["last_used"] = float(used) if used else None
            meta["expired"] = bool(meta["expires"] and meta["expires"] <= now)
            keys.append(meta)
        keys.sort(key=lambda k: (k["created"], k["id"]))
        return 200, {"keys": keys}

    async def revoke_key(self, consumer_id: str, key_id: str):
        if consumer_id in self.seed:
            return self._read_only(consumer_id)
        meta = await self.store.run(records.DELETE_KEY, [records.keys_key(consumer_id), records.USED],
                                    [key_id, records.PREFIX])
        if meta is None:
            if await self._consumer(consumer_id) is None:
                return 404, {"error": f"no consumer {consumer_id!r}"}
            return 404, {"error": f"consumer {consumer_id!r} has no key {key_id!r}"}
        await self._changed({"hashes": [orjson.loads(meta)["sha256"]]})
        return 204, None
