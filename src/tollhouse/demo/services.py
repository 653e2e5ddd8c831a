"""Two small HTTP services for `tollhouse demo`: users and orders (JSON, and GraphQL subgraphs at /graphql)."""
from __future__ import annotations

import asyncio

import httptools
import orjson

USERS = {"1": {"id": "1", "name": "Ada Lovelace"}, "2": {"id": "2", "name": "Alan Turing"},
         "3": {"id": "3", "name": "Grace Hopper"}, "demo": {"id": "demo", "name": "Demo Consumer"}}
ORDERS = [{"id": "o-1", "owner": "1", "item": "analytical engine"}, {"id": "o-2", "owner": "3", "item": "compiler"},
          {"id": "o-3", "owner": "demo", "item": "api gateway"}]


class _DemoService(asyncio.Protocol):
    def __init__(self, handler, graphql=None):
        self.handler = handler
        self.graphql = graphql   # the subgraph schema answered at /graphql (demo/subgraphs.py)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self):
        self.url = b""
        self.body = b""

    def on_body(self, body):
        self.body += body

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        url = httptools.parse_url(self.url)
        query = url.query.decode() if url.query else ""
        if url.path == b"/graphql" and self.graphql is not None:
            from .subgraphs import answer

            status, payload = answer(self.graphql, self.body)
        else:
            status, payload = self.handler(self.parser.get_method().decode(), url.path.decode(), query)
        body = orjson.dumps(payload)
        self.transport.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(body), body))
        if not self.parser.should_keep_alive():
            self.transport.close()


def users(method, path, query):
    if path in ("/", ""):
        return 200, list(USERS.values())
    if path == "/healthz":
        return 200, {"status": "ok"}
    user = USERS.get(path.strip("/"))
    return (200, user) if user else (404, {"error": "no such user"})


def orders(method, path, query):
    if path == "/healthz":
        return 200, {"status": "ok"}
    owner = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("owner")
    return 200, [o for o in ORDERS if owner is None or o["owner"] == owner]


async def start_services(host="127.0.0.1", users_port=9001, orders_port=9002):
    from .subgraphs import ORDERS_SCHEMA, USERS_SCHEMA

    loop = asyncio.get_running_loop()
    a = await loop.create_server(lambda: _DemoService(users, USERS_SCHEMA), host, users_port)
    b = await loop.create_server(lambda: _DemoService(orders, ORDERS_SCHEMA), host, orders_port)
    return [a, b]
