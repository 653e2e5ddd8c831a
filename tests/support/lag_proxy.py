"""A TCP relay that delays every byte by a fixed one-way lag: a link between regions
on one machine (bench/regions.py, tests/integration/test_regions.py)."""
from __future__ import annotations

import asyncio
import threading
import time


class LagProxy:
    """`LagProxy(target_port, lag_s).start()`; connect to `.port`. Each direction's bytes
    arrive `lag_s` after they were sent, in order; `cut()` drops every link (a partition)
    until `mend()`."""

    def __init__(self, target_port: int, lag: float, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.lag = lag
        self.port = 0
        self.cut_off = False
        self.loop = asyncio.new_event_loop()
        self.links: set = set()
        self.ready = threading.Event()

    def start(self) -> "LagProxy":
        threading.Thread(target=self._serve, daemon=True).start()
        self.ready.wait(5)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            server = await asyncio.start_server(self._link, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            async with server:
                await server.serve_forever()
        try:
            self.loop.run_until_complete(main())
        except RuntimeError:
            pass   # stopped
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _link(self, client_reader, client_writer) -> None:
        if self.cut_off:
            client_writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        writers = (client_writer, up_writer)
        self.links.add(writers)
        try:
            await asyncio.gather(self._pump(client_reader, up_writer), self._pump(up_reader, client_writer))
        finally:
            self.links.discard(writers)
            for w in writers:
                w.close()

    async def _pump(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.lag, data or None))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()

    def cut(self) -> None:
        """A partition: every link is dropped and new ones refused."""
        def drop():
            self.cut_off = True
            for writers in list(self.links):
                for w in writers:
                    w.transport.abort()
        self.loop.call_soon_threadsafe(drop)

    def mend(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "cut_off", False)

    def stop(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
