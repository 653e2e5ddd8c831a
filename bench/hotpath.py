"""Microbenchmark of one proxied request through the protocol objects, no sockets.

Feeds a request into a ClientConnection and the upstream's response into a
pooled UpstreamConnection, with transports that only record. It isolates the
Python cost per request (the part Tollhouse controls) from the kernel's.

    .venv/bin/python bench/hotpath.py            # µs per request
    .venv/bin/python bench/hotpath.py --profile  # cProfile of the same loop
    .venv/bin/python bench/hotpath.py ratelimit-memory [--profile]
    .venv/bin/python bench/hotpath.py minimal    # bench/minimal_proxy.py, the floor
    .venv/bin/python bench/hotpath.py ratelimit-redis   # a real redis-server (started here)
    .venv/bin/python bench/hotpath.py plain-async       # its baseline: same loop, no limit

The two async scenarios keep 50 requests in flight on 50 connections, as
wrk -c50 does, and run the event loop until all went upstream (the limiter's
batched script calls go to a real Redis on a free port); they report CPU
time of this process per request, not wall time.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from tollhouse.builtins import install  # noqa: E402
from tollhouse.config import load_text  # noqa: E402
from tollhouse.flow import WorkerCore  # noqa: E402
from tollhouse.observability.access_log import format_batch  # noqa: E402
from tollhouse.observability.metrics import Stats  # noqa: E402
from tollhouse.server.protocol import ClientConnection  # noqa: E402
from tollhouse.state import build_state  # noqa: E402
from tollhouse.store import MemoryStore  # noqa: E402
from tollhouse.upstream.pool import UpstreamConnection  # noqa: E402

REQUEST = b"GET /api/users/7 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 300\r\nConnection: keep-alive\r\n\r\n" + b"x" * 300)


class NullTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.sent = 0

    def write(self, data):
        self.sent += 1

    def writelines(self, parts):
        self.sent += 1

    def is_closing(self):
        return False

    def close(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


class Worker(WorkerCore):
    def __init__(self, access_log: bool, route_extra: str = "", store_url: str | None = None):
        super().__init__(asyncio.new_event_loop())
        config, errors = load_text((f"store: {store_url}\n" if store_url else "") + f"""
auth: {{providers: {{dev: {{type: jwt, algorithms: [HS256], secret: "{JWT_SECRET}"}}}}}}
upstreams: {{u: {{targets: ["http://127.0.0.1:9"]}}}}
routes:
  - {{name: users, match: {{prefix: /api}}, upstream: u""" + route_extra + "}")
        assert not errors, errors
        self.stats = Stats()
        from tollhouse.policies.cache import ResponseCache

        if store_url:
            from tollhouse.store import open_store

            asyncio.set_event_loop(self.loop)
            store = open_store(store_url)
        else:
            store = MemoryStore()
        self.cache = ResponseCache(config.cache, store, self.stats, self)
        self.state = build_state(config, self.loop, self.stats, store, workers={"cache": self.cache})
        self.date_line = b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        from tollhouse.observability.access_log import request_id_factory

        self.next_request_id = request_id_factory()
        self.access_log = access_log

    def count_ended(self):
        """As the real worker does every few ms, but formatting the log lines
        inline: their cost is on the same core in the real gateway too."""
        batch, self.ended = self.ended, []
        self.stats.fold(batch)
        if self.access_log:
            format_batch(batch, 0.0)


class SyncWorker(Worker):
    """For `run()`, which drives the connections without running the loop and
    flushes the outbox after each read itself: nothing is scheduled. (Under
    load the loop's scheduled flush is one per batch of reads, not per
    request; never run, the handles would pile up and be measured instead.)"""

    def defer(self, gathered):
        self.outbox.append(gathered)


JWT_SECRET = "hotpath-secret-0123456789-0123456789-0123456789-0123456789"
SCENARIOS = {
    "plain": "",
    "ratelimit-memory": ", rate_limits: [{limit: 100000000, window: 1m, key: ip}]",
    "jwt": ", auth: {providers: [dev], scopes: [bench:read]}",
    "cache-memory": ", cache: {ttl: 1h}",   # hits: the upstream is asked once, in the warm-up
}


def setup(access_log=True, route_extra="", store_url=None):
    worker = SyncWorker(access_log, route_extra, store_url)
    client = ClientConnection(worker, b"http")
    client.connection_made(NullTransport())
    target = worker.state.pools["u"].targets[0]
    up = UpstreamConnection(target)
    up.connection_made(NullTransport())
    target.open = 1
    target.idle.append(up)
    return worker, client, up


def run(n: int, client, up, request: bytes = REQUEST, upstream: bool = True) -> float:
    feed_client = client.data_received
    feed_up = up.data_received
    worker = client.worker
    flush = worker.flush_outbox   # what the event loop runs after each batch of reads
    t0 = time.perf_counter()
    for i in range(n):
        feed_client(request)
        flush()
        if upstream:
            feed_up(RESPONSE)
            flush()
        if i & 255 == 255:
            worker.count_ended()
    worker.count_ended()
    return (time.perf_counter() - t0) / n


def run_minimal(n: int) -> float:
    """The same request and response through bench/minimal_proxy.py's classes."""
    import minimal_proxy

    class Sink:
        def write(self, data):
            pass

    client, up = minimal_proxy.Client(), minimal_proxy.Upstream()
    client.connection_made(Sink())
    up.connection_made(Sink())
    minimal_proxy.idle.append(up)
    t0 = time.perf_counter()
    for _ in range(n):
        client.data_received(REQUEST)
        up.data_received(RESPONSE)
    return (time.perf_counter() - t0) / n


class CountingTransport(NullTransport):
    """An upstream transport that tells `waiter` when `expected` requests were written."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def write(self, data):
        counter = self.counter
        counter[0] += 1
        if counter[0] == counter[1]:
            counter[2].set_result(None)


def run_in_flight(scenario: str, rounds: int, in_flight: int = 50) -> float:
    """CPU seconds per request with `in_flight` requests at once, through the event loop."""
    redis = None
    store_url = None
    if scenario == "ratelimit-redis":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from run import start_redis

        redis, port = start_redis()
        store_url = f"redis://127.0.0.1:{port}/0"
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())   # the gateway's loop
        worker = Worker(True, SCENARIOS["ratelimit-memory"] if redis else "", store_url)
        loop = worker.loop
        target = worker.state.pools["u"].targets[0]
        counter = [0, 0, None]
        clients, ups = [], []
        for _ in range(in_flight):
            client = ClientConnection(worker, b"http")
            client.connection_made(NullTransport())
            clients.append(client)
            up = UpstreamConnection(target)
            up.connection_made(CountingTransport(counter))
            target.idle.append(up)
            ups.append(up)
        target.open = in_flight

        async def drive(n):
            for _ in range(n):
                counter[0], counter[1], counter[2] = 0, in_flight, loop.create_future()
                for client in clients:
                    client.data_received(REQUEST)
                if counter[0] < in_flight:
                    await counter[2]
                for up in ups:
                    up.data_received(RESPONSE)
                worker.count_ended()

        loop.run_until_complete(drive(20))   # warm-up: connections, script load
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            loop.run_until_complete(drive(rounds))
            best = min(best, (time.process_time() - t0) / (rounds * in_flight))
        return best
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait()


def main():
    install()
    for scenario in ("ratelimit-redis", "plain-async"):
        if scenario in sys.argv[1:]:
            best = run_in_flight(scenario, 400)
            print(f"{scenario}: {best * 1e6:.2f} us CPU per proxied request (50 in flight through the event loop)")
            return
    if "minimal" in sys.argv[1:]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        run_minimal(2000)
        best = min(run_minimal(20000) for _ in range(5))
        print(f"minimal: {best * 1e6:.2f} us per proxied request (bench/minimal_proxy.py, no features)")
        return
    scenario = next((a for a in sys.argv[1:] if a in SCENARIOS), "plain")
    worker, client, up = setup(route_extra=SCENARIOS[scenario])
    request = REQUEST
    if scenario == "jwt":
        from tollhouse.policies.auth.tokens import mint

        bearer = mint(secret=JWT_SECRET, subject="bench", scope="bench:read", ttl="1d").encode()
        request = REQUEST.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + bearer + b"\r\n\r\n")
    upstream = not scenario.startswith("cache")
    if not upstream:
        run(1, client, up, request)   # the miss that fills the cache
    run(2000, client, up, request, upstream)
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        run(20000, client, up, request, upstream)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    best = min(run(20000, client, up, request, upstream) for _ in range(5))
    print(f"{scenario}: {best * 1e6:.2f} us per proxied request (Python side, metrics and access log lines included)")


if __name__ == "__main__":
    main()
