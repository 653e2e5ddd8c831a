"""The admin listener's `/consumers` API (contract §14; docs/auth.md, "Consumers at run
time"): consumers and their API keys made, read, changed and revoked in the store,
each change announced to the fleet by the worker's directory (directory.py)."""
from __future__ import annotations

import base64
import hashlib
import os
import time
from urllib.parse import parse_qsl

import orjson

from ...config.loader import ConfigError
from . import records
from .providers import StoreUnavailable
from .schema import ListQuery, NewKey, RuntimeConsumer


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


class ConsumerAdmin:
    """The API of one worker's directory."""

    def __init__(self, directory):
        self.directory = directory

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
        return 409, {"error": f"consumer {consumer_id!r} is defined in {self.directory.config_file} and is read-only here"}

    async def _consumer(self, consumer_id: str) -> dict | None:
        raw = await self.directory.store.get(records.consumer_key(consumer_id))
        return orjson.loads(raw) if raw else None

    def _seed_view(self, c) -> dict:
        return {"id": c.id, "tier": c.tier, "scopes": list(c.scopes), "roles": list(c.roles),
                "rate_limits": [_schema_dict(r) for r in c.rate_limits], "metadata": {}, "source": "file"}

    def _check_tier(self, tier: str):
        if tier and self.directory.tiers and tier not in self.directory.tiers:
            return 400, {"error": f"tier: no tier named {tier!r} (tiers: {', '.join(sorted(self.directory.tiers))})"}
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
        if value.id in self.directory.seed:
            return self._read_only(value.id)
        now = request.get("now", time.time())
        record = {"id": value.id, "tier": value.tier, "scopes": list(value.scopes), "roles": list(value.roles),
                  "rate_limits": document.get("rate_limits", []), "metadata": value.metadata,
                  "created": now, "updated": now}
        made = await self.directory.store.run(records.CREATE_CONSUMER, [records.consumer_key(value.id), records.ALL],
                                    [value.id, orjson.dumps(record)])
        if not made:
            return 409, {"error": f"a consumer {value.id!r} exists"}
        await self.directory._changed({"consumer": value.id})
        return 201, {**record, "source": "admin"}

    async def read_consumer(self, consumer_id: str):
        seed = self.directory.seed.get(consumer_id)
        if seed is not None:
            return 200, self._seed_view(seed)
        record = await self._consumer(consumer_id)
        if record is None:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        return 200, {**record, "source": "admin"}

    async def change_consumer(self, consumer_id: str, body: str, request: dict):
        if consumer_id in self.directory.seed:
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
        if not await self.directory.store.run(records.REPLACE_CONSUMER, [records.consumer_key(consumer_id)],
                                    [orjson.dumps(record)]):
            return 404, {"error": f"no consumer {consumer_id!r}"}
        await self.directory._changed({"consumer": consumer_id})
        return 200, {**record, "source": "admin"}

    async def remove_consumer(self, consumer_id: str):
        if consumer_id in self.directory.seed:
            return self._read_only(consumer_id)
        removed = await self.directory.store.run(records.DELETE_CONSUMER, [
            records.consumer_key(consumer_id), records.ALL, records.keys_key(consumer_id), records.USED,
            records.sessions_key(consumer_id)], [consumer_id, records.PREFIX])
        if removed is None:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        hashes, sessions = removed
        await self.directory._changed({"consumer": consumer_id, "hashes": [_text(h) for h in hashes],
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
            batch = await self.directory.store.run(records.LIST_CONSUMERS, [records.ALL], [after, value.limit, records.PREFIX])
            ids = [_text(batch[i]) for i in range(0, len(batch), 2)]
            upto = ids[-1] if len(ids) == value.limit else None   # None: the store has no more
            candidates = [{**orjson.loads(batch[i + 1]), "source": "admin"} for i in range(0, len(batch), 2)
                          if batch[i + 1]]
            candidates += [self._seed_view(c) for i, c in self.directory.seed.items()
                           if i > after and (upto is None or i <= upto)]
            for record in sorted(candidates, key=lambda r: r["id"]):
                if not value.tier or record["tier"] == value.tier:
                    found.append(record)
            after = upto
        page = found[:value.limit]
        return 200, {"consumers": page, "next": page[-1]["id"] if len(found) > value.limit else None}

    async def create_key(self, consumer_id: str, body: str, request: dict):
        if consumer_id in self.directory.seed:
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
        made = await self.directory.store.run(records.CREATE_KEY, [
            records.consumer_key(consumer_id), records.keys_key(consumer_id), records.hash_key(sha)],
            [key_id, orjson.dumps(meta), orjson.dumps({"consumer": consumer_id, "key_id": key_id, "expires": expires}),
             int(value.ttl * 1000)])
        if not made:
            return 404, {"error": f"no consumer {consumer_id!r}"}
        await self.directory._changed({"hashes": [sha]})
        shown = {k: v for k, v in meta.items() if k != "sha256"}
        return 201, {**shown, "key": key, "consumer": consumer_id}

    async def list_keys(self, consumer_id: str):
        if consumer_id in self.directory.seed:
            return 200, {"keys": [], "source": "file"}
        answer = await self.directory.store.run(records.LIST_KEYS, [
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
        if consumer_id in self.directory.seed:
            return self._read_only(consumer_id)
        meta = await self.directory.store.run(records.DELETE_KEY, [records.keys_key(consumer_id), records.USED],
                                    [key_id, records.PREFIX])
        if meta is None:
            if await self._consumer(consumer_id) is None:
                return 404, {"error": f"no consumer {consumer_id!r}"}
            return 404, {"error": f"consumer {consumer_id!r} has no key {key_id!r}"}
        await self.directory._changed({"hashes": [orjson.loads(meta)["sha256"]]})
        return 204, None
