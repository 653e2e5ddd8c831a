"""The floor: a featureless callback proxy on uvloop + httptools (a yardstick, not product code).

No routing, validation, limits, timeouts, metrics or logs; one upstream,
pooled keep-alive connections, responses relayed header by header. It is
what issue 2 calls "a minimal callback-style asyncio + uvloop + httptools
proxy", kept here so that its cost can be measured beside Tollhouse's:

    .venv/bin/python bench/minimal_proxy.py LISTEN_PORT UPSTREAM_PORT   # serve
    .venv/bin/python bench/hotpath.py minimal                           # its Python per request
"""
from __future__ import annotations

import asyncio
import sys

import httptools

idle: list["Upstream"] = []


class Upstream(asyncio.Protocol):
    def __init__(self):
        self.client = None
        self.parser = httptools.HttpResponseParser(self)
        self.lines: list[bytes] = []
        self.out: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        client = self.client
        self.out = []
        self.parser.feed_data(data)
        client.transport.write(b"".join(self.out))

    def on_message_begin(self):
        self.lines = []

    def on_header(self, name, value):
        self.lines.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self):
        self.out.append(b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code())
        self.out.extend(self.lines)
        self.out.append(b"\r\n")

    def on_body(self, body):
        self.out.append(body)

    def on_message_complete(self):
        self.client = None
        idle.append(self)


class Client(asyncio.Protocol):
    upstream_port = 0

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_begin(self):
        self.lines = []
        self.url = b""

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.lines.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self):
        head = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n", *self.lines, b"\r\n"])
        if idle:
            up = idle.pop()
            up.client = self
            up.transport.write(head)
        else:
            asyncio.get_running_loop().create_task(self.connect(head))

    async def connect(self, head: bytes):
        _, up = await asyncio.get_running_loop().create_connection(Upstream, "127.0.0.1", self.upstream_port)
        up.client = self
        up.transport.write(head)


def main() -> None:
    import uvloop

    Client.upstream_port = int(sys.argv[2])
    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.create_server(Client, "127.0.0.1", int(sys.argv[1])))
    loop.run_forever()


if __name__ == "__main__":
    main()
