"""Store calls shared by the requests of one event-loop tick.

Requests add an item; once per tick the gathered items go to `send(batch,
done)`, which starts one store round trip for all of them and calls `done()`
when it is over (from a reply callback: no task per batch; `in_task` adapts
an async function). At most `max_in_flight` batches are out at once: items
that arrive meanwhile wait for the next one, so under load batches grow
instead of round trips multiplying.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class TickBatcher:
    __slots__ = ("send", "max_in_flight", "max_batch", "pending", "scheduled", "in_flight")

    def __init__(self, send: Callable[[list, Callable[[], None]], None], max_in_flight: int = 1,
                 max_batch: int = 256):
        self.send = send
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
        self.send(batch, self._done)

    def _done(self) -> None:
        self.in_flight -= 1
        if self.pending and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._start)


def in_task(run: Callable[[list], Awaitable[None]]) -> Callable[[list, Callable[[], None]], None]:
    """A TickBatcher `send` that runs `await run(batch)` in a task, then calls `done()`."""
    running: set[asyncio.Task] = set()   # the loop keeps only weak references to tasks

    def send(batch: list, done: Callable[[], None]) -> None:
        task = asyncio.get_running_loop().create_task(run(batch))
        running.add(task)
        task.add_done_callback(lambda t: (running.discard(t), done()))

    return send
