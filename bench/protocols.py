"""Protocol benchmarks for `make bench` (issue 20): WebSocket echo messages per second
through Tollhouse vs the same client talking to the echo server directly, and
gRPC-transcoded requests per second vs a direct grpcio client calling the same server.

The servers and clients are Python (websockets, grpcio) on the load core; the gateway
is pinned to its own core. Printed as ratios, each the median of alternating rounds.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402

MESSAGE = b"x" * 64
CLIENTS = int(os.environ.get("BENCH_PROTOCOL_CLIENTS", "16"))


def echo_server() -> tuple[subprocess.Popen, int]:
    port = bench.free_port()
    code = ("import asyncio, websockets\n"
            "async def echo(ws):\n"
            "    async for m in ws:\n"
            "        await ws.send(m)\n"
            "async def main():\n"
            f"    async with websockets.serve(echo, '127.0.0.1', {port}, compression=None, ping_interval=None):\n"
            "        await asyncio.Future()\n"
            "asyncio.run(main())\n")
    proc = subprocess.Popen(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c", code])
    bench.wait_port(port)
    return proc, port


async def _ws_load(url: str, seconds: float) -> float:
    import websockets

    done = 0
    stop = time.monotonic() + seconds

    async def client():
        nonlocal done
        async with websockets.connect(url, compression=None, ping_interval=None, max_size=None) as ws:
            while time.monotonic() < stop:
                await ws.send(MESSAGE)
                await ws.recv()
                done += 1
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / seconds


def ws_rate(url: str, seconds: float) -> float:
    """Echo round trips per second, the client on the load core (a child process)."""
    code = (f"import asyncio, sys; sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); import protocols; "
            f"print(asyncio.run(protocols._ws_load({url!r}, {seconds})))")
    out = subprocess.run(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_websocket(workdir: str) -> dict:
    proc, port = echo_server()
    th = bench.Tollhouse(workdir, port, bench.PROXY_CPUS, route_extra="""  - name: ws
    match: {prefix: /ws}
    upstream: bench
    websocket: {idle_timeout: 1m, max_message_bytes: 1MiB}
""")
    try:
        ws_rate(f"ws://127.0.0.1:{th.port}/ws", 1)
        direct, through = [], []
        for _ in range(bench.ROUNDS):
            direct.append(ws_rate(f"ws://127.0.0.1:{port}/", bench.DURATION))
            through.append(ws_rate(f"ws://127.0.0.1:{th.port}/ws", bench.DURATION))
    finally:
        th.stop()
        proc.terminate()
        proc.wait()
    ratios = [t / d for t, d in zip(through, direct)]
    return {"direct": statistics.median(direct), "through": statistics.median(through), "ratios": ratios}


def run_grpc(workdir: str) -> dict:
    """Transcoded GetItem through Tollhouse (wrk, POST JSON) vs grpcio calling the server directly."""
    from tests.support.grpc_server import compile_descriptors

    descriptors = compile_descriptors(workdir)
    port = bench.free_port()
    server = subprocess.Popen(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c",
                               "import sys, time; sys.path.insert(0, %r); from tests.support.grpc_server import "
                               "GrpcServer; s = GrpcServer(%d); s.start(); time.sleep(10**6)"
                               % (ROOT, port)])
    try:
        bench.wait_port(port)
    except BaseException:
        server.terminate()
        raise
    th = bench.Tollhouse(workdir, port, bench.PROXY_CPUS, extra="", route_extra="""  - name: item
    match: {path: "/v1/items/{id}", methods: [GET]}
    upstream: shop
    grpc: {method: shop.Inventory/GetItem}
""", upstreams_extra=f"""  shop:
    targets: ["grpc://127.0.0.1:{port}"]
    descriptors: {descriptors}
""")
    try:
        bench.wrk(th.port, "/v1/items/a-1", bench.CONNS, 1)
        through = [bench.wrk(th.port, "/v1/items/a-1", bench.CONNS, bench.DURATION)["rps"] for _ in range(bench.ROUNDS)]
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); "
                f"import protocols; print(protocols.grpc_direct({port}, {descriptors!r}, {bench.DURATION}))")
        direct = [float(subprocess.run(["taskset", "-c", bench.PROXY_CPUS, sys.executable, "-c", code],
                                       capture_output=True, text=True, check=True).stdout.split()[-1])
                  for _ in range(bench.ROUNDS)]
    finally:
        th.stop()
        server.terminate()
        server.wait()
    return {"through": statistics.median(through), "direct": statistics.median(direct),
            "ratios": [t / d for t, d in zip(through, direct)]}


def grpc_direct(port: int, descriptors: str, seconds: float) -> float:
    """GetItem calls per second from one grpcio asyncio client process, CLIENTS * 4 in flight."""
    import grpc
    from google.protobuf import message_factory

    from tollhouse.policies.grpc import find_method, load_descriptors

    desc = find_method(load_descriptors(descriptors), "shop.Inventory/GetItem")
    req_cls = message_factory.GetMessageClass(desc.input_type)
    resp_cls = message_factory.GetMessageClass(desc.output_type)

    async def go():
        done = 0
        stop = time.monotonic() + seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/shop.Inventory/GetItem", request_serializer=req_cls.SerializeToString,
                                       response_deserializer=resp_cls.FromString)

            async def worker():
                nonlocal done
                while time.monotonic() < stop:
                    await call(req_cls(id="a-1"))
                    done += 1
            await asyncio.gather(*(worker() for _ in range(CLIENTS * 4)))
        return done / seconds
    return asyncio.run(go())


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-protocols-")
    ws = run_websocket(workdir)
    print(f"  websocket echo: {ws['through']:.0f} msg/s through Tollhouse vs {ws['direct']:.0f} direct, "
          f"ratio {bench.spread(ws['ratios'])}x (aim >= 0.5x)", flush=True)
    g = run_grpc(workdir)
    print(f"  grpc transcoding: {g['through']:.0f} req/s through Tollhouse (wrk) vs {g['direct']:.0f} direct grpcio "
          f"calls/s, ratio {bench.spread(g['ratios'])}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
