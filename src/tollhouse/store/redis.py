"""Redis (single node, TLS, or Cluster) through redis-py's asyncio client with hiredis."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Sequence

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from .base import Script, Store
from .guard import STORE_ERRORS

_MAX_IDLE = 8   # command()'s idle connections kept
_UNLOCK = Script.from_file("unlock", lambda store, keys, args, now: 0)


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        if url.startswith("redis+cluster://"):
            nodes = []
            for hostport in url[len("redis+cluster://"):].split("/")[0].split(","):
                host, _, port = hostport.rpartition(":")
                nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
            self.client = RedisCluster(startup_nodes=nodes, socket_timeout=timeout, socket_connect_timeout=timeout)
            self.kind = "redis-cluster"
        else:
            self.client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._shas: dict[str, str] = {}
        self._idle: list = []   # connections of command(), single node only

    async def command(self, *args):
        """One command for the request path, on a connection of the store's own.

        The client's `execute_command` costs ~40 µs of Python a call in
        redis-py 8 (retry wrapper, pool bookkeeping, observability events);
        this packs with hiredis and talks to a redis-py `Connection` directly
        (its handshake, AUTH, SELECT and TLS included). It has no read
        timeout of its own (redis-py's costs a task per write): the caller
        bounds the call, as the batchers do with `asyncio.timeout`. A
        connection whose reply was not read (timeout, cancellation, reset) is
        closed, never reused; Redis error replies leave it in step and it is
        kept. Cluster: through the client, which routes by slot.
        """
        if self.kind != "redis":
            return await self.client.execute_command(*args)
        idle = self._idle
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            try:
                # Closed by the server while idle (its `timeout`, a proxy) or holding
                # unread bytes: not reusable (what redis-py's pool checks too).
                stale = await conn.can_read()
            except STORE_ERRORS:
                stale = True
            if stale:
                await conn.disconnect(nowait=True)
                conn = None
        if conn is None:
            pool = self.client.connection_pool
            conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        try:
            await conn.send_packed_command(hiredis.pack_command(args), check_health=False)
            reply = await conn.read_response()
        except ResponseError:
            idle.append(conn)
            raise
        except BaseException:
            # The others reach the same server: when it dies without closing them
            # (a partition, a hung host) they would each fail in turn.
            self._idle = []
            for c in (conn, *idle):
                await c.disconnect(nowait=True)
            raise
        if len(idle) < _MAX_IDLE:
            idle.append(conn)
        else:
            await conn.disconnect(nowait=True)
        return reply

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._shas.get(script.name)
        if sha is not None:
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                pass  # the server restarted or flushed its scripts: EVAL loads it again
        result = await self.client.eval(script.lua, len(keys), *keys, *args)
        if sha is None:
            import hashlib

            self._shas[script.name] = hashlib.sha1(script.lua.encode()).hexdigest()
        return result

    async def get(self, key):
        return await self.client.get(key)

    async def set(self, key, value, ttl=None):
        if ttl is None:
            await self.client.set(key, value)
        else:
            await self.client.set(key, value, px=max(1, int(ttl * 1000)))

    async def delete(self, *keys):
        n = 0
        for k in keys:  # one key per call keeps Cluster slots simple
            n += await self.client.delete(k)
        return n

    async def lock(self, key, ttl):
        token = os.urandom(8).hex()
        ok = await self.client.set(key, token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    async def unlock(self, key, token):
        return bool(await self.run(_UNLOCK, [key], [token]))

    async def ping(self):
        try:
            return bool(await asyncio.wait_for(self.client.ping(), self.timeout))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self):
        for conn in self._idle:
            await conn.disconnect(nowait=True)
        self._idle.clear()
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001
            pass
