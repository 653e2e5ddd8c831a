"""WebSocket relaying through the real gateway (docs/protocols.md): a real echo server
and real clients (the `websockets` library, in tests only)."""
import asyncio
import json
import signal
import threading
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ALICE_API_KEY
from tests.support.processes import wait_for


class EchoServer:
    """A WebSocket echo server in its own thread; `/headers` answers the handshake's headers once."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.port = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.handshakes = []

    async def handler(self, ws):
        self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        if ws.request.path == "/ws/headers":
            await ws.send(json.dumps(self.handshakes[-1]))
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    def start(self):
        self.thread.start()

        async def go():
            self.server = await websockets.serve(self.handler, "127.0.0.1", 0, max_size=None, ping_interval=None)
            self.port = self.server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)
        return self

    def stop(self):
        async def go():
            self.server.close()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def echo():
    e = EchoServer().start()
    yield e
    e.stop()


def config(echo_port: int, extra_route: str = "", ws: str = "{idle_timeout: 2s, max_message_bytes: 11MiB}") -> str:
    return f"""
shutdown_grace: 3s
{ALICE_API_KEY}
upstreams:
  echo: {{targets: ["http://127.0.0.1:{echo_port}"]}}
routes:
  - name: chat
    match: {{prefix: /ws}}
    upstream: echo
    websocket: {ws}
  - name: private-chat
    match: {{prefix: /private}}
    upstream: echo
    rewrite: /ws/private
    auth: {{providers: [keys]}}
    rate_limits: [{{limit: 2, window: 1m, key: consumer}}]
    websocket: true
  - name: plain
    match: {{prefix: /plain}}
    upstream: echo
{extra_route}
"""


def run(coro):
    return asyncio.run(coro)


def url(g, path="/ws/echo"):
    return f"ws://127.0.0.1:{g.port}{path}"


def test_text_binary_fragmented_and_large_messages_are_relayed(gateway_factory, echo):
    g = gateway_factory(config(echo.port))

    async def go():
        # No permessage-deflate: the 10 MiB message crosses at its size.
        async with websockets.connect(url(g), max_size=None, ping_interval=None, compression=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            await ws.send(["frag", "mented", " message"])   # one message in three frames
            assert await ws.recv() == "fragmented message"
            big = bytes(range(256)) * (10 * 4096)           # 10 MiB, under the 11 MiB limit
            await ws.send(big)
            assert await ws.recv() == big
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
    run(go())
    metrics = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_websocket_messages_total{direction="in",route="chat"} 4.0' in metrics
    assert 'tollhouse_websocket_messages_total{direction="out",route="chat"} 4.0' in metrics
    line = wait_for(lambda: [json.loads(x) for x in g.stdout().splitlines() if '"route":"chat"' in x])[0]
    assert line["status"] == 101 and line["bytes"] > 10 * 1024 * 1024
    assert line["websocket"].startswith("closed by peer; messages in 4 out 4")


def test_the_upstream_gets_the_handshake_with_forwarded_headers(gateway_factory, echo):
    g = gateway_factory(config(echo.port))

    async def go():
        async with websockets.connect(url(g, "/ws/headers"), ping_interval=None,
                                      additional_headers={"X-Request-Id": "ws-req-1"}) as ws:
            return json.loads(await ws.recv())
    headers = run(go())
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-request-id"] == "ws-req-1"
    assert headers["upgrade"] == "websocket" and "sec-websocket-key" in headers


def test_a_message_over_the_limit_closes_with_1009(gateway_factory, echo):
    g = gateway_factory(config(echo.port, ws="{max_message_bytes: 1KiB, idle_timeout: 5s}"))

    async def go():
        async with websockets.connect(url(g), max_size=None, ping_interval=None, compression=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send(["y" * 600, "y" * 600])   # 1200 bytes in two fragments: over, counted across them
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd.code if closed.value.rcvd else None
    assert run(go()) == 1009


def test_idle_sessions_close_with_1000_and_pings_keep_healthy_ones(gateway_factory, echo):
    g = gateway_factory(config(echo.port, ws="{idle_timeout: 600ms}", extra_route="""
  - name: pinged
    match: {prefix: /pinged}
    upstream: echo
    rewrite: /ws/pinged
    websocket: {idle_timeout: 600ms, ping_interval: 150ms}
"""))

    async def idle():
        async with websockets.connect(url(g), ping_interval=None) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd.code, time.monotonic() - started

    code, waited = run(idle())
    assert code == 1000 and 0.5 < waited < 2.5

    async def pinged():
        # The client answers the gateway's pings (websockets does it itself): never idle.
        async with websockets.connect(url(g, "/pinged"), ping_interval=None) as ws:
            await asyncio.sleep(1.5)
            await ws.send("still here")
            return await asyncio.wait_for(ws.recv(), 5)
    assert run(pinged()) == "still here"


def test_auth_and_limits_run_before_the_upgrade(gateway_factory, echo):
    g = gateway_factory(config(echo.port))

    async def refused(headers):
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            async with websockets.connect(url(g, "/private"), additional_headers=headers, ping_interval=None):
                pass
        return e.value.response.status_code

    before = len(echo.handshakes)
    assert run(refused({})) == 401
    assert len(echo.handshakes) == before   # the upstream never saw it

    async def ok():
        async with websockets.connect(url(g, "/private"), additional_headers={"X-API-Key": "alice-key"},
                                      ping_interval=None) as ws:
            await ws.send("hi")
            return await ws.recv()
    assert run(ok()) == "hi" and run(ok()) == "hi"
    assert run(refused({"X-API-Key": "alice-key"})) == 429   # a session counts as one request


def test_an_upgrade_on_another_route_is_proxied_without_it(gateway_factory, echo):
    g = gateway_factory(config(echo.port))

    async def go():
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            async with websockets.connect(url(g, "/plain"), ping_interval=None):
                pass
        return e.value.response.status_code
    # The echo server, asked without the upgrade, refuses the plain GET (426 from websockets).
    assert run(go()) == 426


def test_drain_closes_sessions_with_1001(gateway_factory, echo):
    g = gateway_factory(config(echo.port))

    async def go():
        async with websockets.connect(url(g), ping_interval=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            g.signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd.code, time.monotonic() - started
    code, waited = run(go())
    assert code == 1001 and waited < 3
    assert g.proc.wait(10) == 0


def test_a_reload_keeps_sessions_and_a_removed_route_closes_its_own(gateway_factory, echo):
    g = gateway_factory(config(echo.port, ws="{idle_timeout: 30s}"))

    async def go():
        async with websockets.connect(url(g), ping_interval=None) as ws:
            # A reload that changes the route: the session goes on with its settings.
            g.write_config(config(echo.port, ws="{idle_timeout: 100ms}"))
            assert g.get_admin("/reload", "POST")[0] == 200
            await asyncio.sleep(0.5)
            await ws.send("after reload")
            assert await ws.recv() == "after reload"
            # A reload without the route: closed with 1001 after shutdown_grace (3s).
            g.write_config(config(echo.port).replace("    websocket: {idle_timeout: 2s, max_message_bytes: 11MiB}\n",
                                                     ""))
            assert g.get_admin("/reload", "POST")[0] == 200
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code, time.monotonic() - started
    code, waited = run(go())
    assert code == 1001 and 2.5 < waited < 6
