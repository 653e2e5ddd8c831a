"""An upstream with a capacity: it serves at most `capacity` requests at once, each taking
`service` seconds; the rest queue inside it (as a saturated application server's would).
Both may be changed while it runs (the upstream gets bigger, smaller, faster, slower)."""
from __future__ import annotations

import asyncio
import threading
from collections import deque

import httptools

from .processes import free_port


class CapacityUpstream:
    def __init__(self, capacity: int, service: float):
        self.capacity = capacity
        self.service = service
        self.port = free_port()
        self.served = 0
        self.active = 0
        self.waiters: deque = deque()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CapacityUpstream":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    async def _start(self):
        upstream = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)
                self.url = b""

            def on_url(self, url):
                self.url += url

            def data_received(self, data):
                self.parser.feed_data(data)

            def on_message_complete(self):
                url, self.url = self.url, b""
                if url.startswith(b"/_control?"):
                    # /_control?service=0.02&capacity=8: change it while it runs (another process's benchmark).
                    for pair in url.split(b"?", 1)[1].split(b"&"):
                        key, _, value = pair.partition(b"=")
                        if key == b"service":
                            upstream.service = float(value)
                        elif key == b"capacity":
                            upstream.capacity = int(value)
                    self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                    return
                upstream.loop.create_task(upstream.answer(self.transport))

        self.server = await self.loop.create_server(Conn, "127.0.0.1", self.port, backlog=1024)

    async def answer(self, transport):
        while self.active >= self.capacity:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            await waiter
        self.active += 1
        try:
            await asyncio.sleep(self.service)
        finally:
            self.active -= 1
            while self.waiters and self.active < self.capacity:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
        self.served += 1
        if not transport.is_closing():
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def stop(self) -> None:
        async def shut():
            self.server.close()
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
