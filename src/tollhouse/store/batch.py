"""Store calls shared by the requests of one event-loop tick.

Requests add an item; once per tick the gathered items go to `run(batch)`
(one store round trip for all of them). At most `max_in_flight` runs are
out at once: items that arrive meanwhile wait for the next run, so under
load batches grow instead of round trips multiplying.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class TickBatcher:
    __slots__ = ("run", "max_in_flight", "max_batch", "pending", "scheduled", "in_flight")

    def __init__(self, run: Callable[[list], Awaitable[None]], max_in_flight: int = 2, max_batch: int = 256):
        self.run = run
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.pending: list = []
        self.scheduled = False
        self.in_flight = 0

    def add(self, item: Any) -> None:
        self.pending.append(item)
        if self.in_flight < self.max_in_flight and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self.scheduled = False
        if not self.pending or self.in_flight >= self.max_in_flight:
            return
        batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
        self.in_flight += 1
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list) -> None:
        try:
            await self.run(batch)
        finally:
            self.in_flight -= 1
            if self.pending and not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._start)
