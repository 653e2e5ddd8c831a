"""The in-process store: a dict with expiry. Per worker process (not shared)."""
from __future__ import annotations

import heapq
import os
import time
from typing import Any, Sequence

from .base import Script, Store


class MemoryStore(Store):
    kind = "memory"

    def __init__(self, clock=time.time):
        self.clock = clock
        self.data: dict[str, Any] = {}
        self.expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    # Synchronous helpers, for Script.python twins -------------------------
    def read(self, key: str) -> Any:
        exp = self.expiry.get(key)
        if exp is not None and exp <= self.clock():
            self._drop(key)
            return None
        return self.data.get(key)

    def write(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value
        if ttl is None:
            self.expiry.pop(key, None)
        else:
            at = self.clock() + ttl
            self.expiry[key] = at
            heapq.heappush(self._heap, (at, key))
        self._sweep()

    def _drop(self, key: str) -> None:
        self.data.pop(key, None)
        self.expiry.pop(key, None)

    def _sweep(self, budget: int = 8) -> None:
        # Amortised expiry: a few expired entries per write keep memory bounded.
        now = self.clock()
        heap = self._heap
        while budget and heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if self.expiry.get(key) == at:
                self._drop(key)
            budget -= 1

    # The Store interface ---------------------------------------------------
    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return script.python(self, list(keys), list(args), self.clock())

    async def get(self, key):
        return self.read(key)

    async def set(self, key, value, ttl=None):
        self.write(key, value, ttl)

    async def delete(self, *keys):
        n = 0
        for k in keys:
            if self.read(k) is not None:
                n += 1
            self._drop(k)
        return n

    async def lock(self, key, ttl):
        if self.read(key) is not None:
            return None
        token = os.urandom(8).hex()
        self.write(key, token, ttl)
        return token

    async def unlock(self, key, token):
        if self.read(key) == token:
            self._drop(key)
            return True
        return False

    async def ping(self):
        return True
