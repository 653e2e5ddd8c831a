"""A breaker around a remote store, so that an unreachable Redis never stalls a request.

After one failed call the guard is open: its users take their fallback at
once (no call, no timeout to wait out) while one background probe pings the
store with growing pauses; the first answer closes the guard.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from redis.exceptions import RedisError

log = logging.getLogger("tollhouse.store")

#: What a failed store call raises (connection refused, reset, timeout, Redis errors).
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class StoreGuard:
    __slots__ = ("client", "timeout", "on_change", "open", "probe_task")

    def __init__(self, client, timeout: float, on_change: Callable[[bool, BaseException | None], None]):
        self.client = client
        self.timeout = timeout
        self.on_change = on_change   # (open, error): for the user's metrics and log lines
        self.open = False
        self.probe_task = None

    def failed(self, error: BaseException) -> None:
        if self.open:
            return
        self.open = True
        self.on_change(True, error)
        if self.probe_task is None or self.probe_task.done():
            self.probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        delay = 0.2
        while self.open:
            await asyncio.sleep(delay)
            try:
                if await asyncio.wait_for(self.client.ping(), self.timeout):
                    self.open = False
                    self.on_change(False, None)
                    return
            except STORE_ERRORS:
                pass
            delay = min(1.0, delay * 2)

    def close(self) -> None:
        if self.probe_task is not None:
            self.probe_task.cancel()
