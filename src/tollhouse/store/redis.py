"""Redis (single node, TLS, or Cluster) through redis-py's asyncio client with hiredis."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Sequence

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from .base import Script, Store
from .pipe import RedisPipe

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
        # The request path's calls (batched rate-limit scripts, cache lookups), single node only.
        self.pipe = RedisPipe(self.client, timeout) if self.kind == "redis" else None
        self._tasks: set[asyncio.Task] = set()   # Cluster calls in flight (the loop keeps weak references)

    def call(self, args: tuple, callback, timeout: float | None = None) -> None:
        """One command for the request path, answered to `callback(reply, None)` or
        `callback(None, error)`: through the pipe, or with Cluster in a task of its own."""
        if self.pipe is not None:
            self.pipe.call(hiredis.pack_command(args), callback, timeout)
            return
        task = asyncio.get_running_loop().create_task(self._call_cluster(args, callback, timeout or self.timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_cluster(self, args: tuple, callback, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                reply = await self.client.execute_command(*args)
        except Exception as e:  # noqa: BLE001 - the caller decides what a failure means
            callback(None, e)
        else:
            callback(reply, None)

    async def command(self, *args):
        """One command for the request path: through the store's pipe (store/pipe.py),
        not redis-py's connection layer. Cluster: through the client, which routes by slot."""
        if self.pipe is None:
            return await self.client.execute_command(*args)
        return await self.pipe.command(*args)

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
        if self.pipe is not None:
            self.pipe.close()
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001
            pass
