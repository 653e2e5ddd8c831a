"""HTTP/2 benchmarks for `make bench` (docs/http2.md, docs/benchmarks.md): Tollhouse vs nginx
(`listen ... http2`, cleartext prior knowledge) proxying the plain route to the same HTTP/1.1
upstream, one core each, load from h2load on the load core; Tollhouse's own CPU per request
over HTTP/2 against HTTP/1.1 (wrk); and gRPC unary calls through Tollhouse's passthrough
against the same grpcio client calling the server directly.

Every figure is a median of alternating rounds; ratios are taken round by round.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402

STREAMS = (10, 1)   # streams per connection in the two h2load runs


def h2load(port: int, path: str, connections: int, streams: int, duration: int) -> dict:
    cmd = ["taskset", "-c", bench.LOAD_CPUS, "h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{duration}",
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if m is None or done is None:
        raise RuntimeError(f"h2load failed against port {port}:\n{out}")
    return {"rps": float(m.group(1)), "done": int(done.group(1)), "ok": int(codes.group(1)) if codes else 0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_nginx_h2(workdir: str, upstream_port: int) -> tuple[subprocess.Popen, int]:
    port = bench.free_port()
    proc = bench.start_nginx(workdir, f"""
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 128;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""", bench.PROXY_CPUS)
    bench.wait_port(port)
    return proc, port


def run_http2(workdir: str, upstream_port: int) -> dict:
    """h2load against nginx and Tollhouse (10 and 1 streams per connection), and Tollhouse's
    CPU per request over HTTP/2 (10 streams) and over HTTP/1.1 (wrk), alternating rounds."""
    nginx, nginx_port = start_nginx_h2(workdir, upstream_port)
    th = bench.Tollhouse(workdir, upstream_port, bench.PROXY_CPUS)
    rows: dict = {s: {"nginx": [], "tollhouse": []} for s in STREAMS}
    cpu = {"h2": [], "h1": []}
    try:
        for port in (nginx_port, th.port):
            h2load(port, "/", bench.CONNS, 10, 1)   # warm-up
        bench.wrk(th.port, "/", bench.CONNS, 1)
        for rnd in range(bench.ROUNDS):
            for streams in STREAMS:
                rows[streams]["nginx"].append(h2load(nginx_port, "/", bench.CONNS, streams, bench.DURATION))
                before = cpu_seconds(th.proc.pid)
                r = h2load(th.port, "/", bench.CONNS, streams, bench.DURATION)
                if streams == STREAMS[0]:
                    cpu["h2"].append((cpu_seconds(th.proc.pid) - before) / r["done"] * 1e6)
                rows[streams]["tollhouse"].append(r)
            before = cpu_seconds(th.proc.pid)
            w = bench.wrk(th.port, "/", bench.CONNS, bench.DURATION)
            cpu["h1"].append((cpu_seconds(th.proc.pid) - before) / (w["rps"] * bench.DURATION) * 1e6)
            print(f"  round {rnd + 1}/{bench.ROUNDS}: " + ", ".join(
                f"{s} streams tollhouse/nginx {rows[s]['tollhouse'][-1]['rps'] / rows[s]['nginx'][-1]['rps']:.2f}"
                for s in STREAMS) + f"; CPU µs/request h2 {cpu['h2'][-1]:.1f}, h1 {cpu['h1'][-1]:.1f}", flush=True)
    finally:
        th.stop()
        nginx.terminate()
        nginx.wait()
    out = {"cpu_h2": statistics.median(cpu["h2"]), "cpu_h1": statistics.median(cpu["h1"]),
           "cpu_ratios": [a / b for a, b in zip(cpu["h2"], cpu["h1"])]}
    for s in STREAMS:
        out[s] = {"nginx": statistics.median(r["rps"] for r in rows[s]["nginx"]),
                  "tollhouse": statistics.median(r["rps"] for r in rows[s]["tollhouse"]),
                  "failed": sum(r["done"] - r["ok"] for r in rows[s]["tollhouse"]),
                  "ratios": [a["rps"] / b["rps"] for a, b in zip(rows[s]["tollhouse"], rows[s]["nginx"])]}
    return out


def run_grpc_passthrough(workdir: str) -> dict:
    """GetItem calls per second from one grpcio client process: through Tollhouse's
    passthrough route vs straight to the server, alternating rounds."""
    port = bench.free_port()
    server = subprocess.Popen(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c",
                               "import sys, time; sys.path.insert(0, %r); from tests.support.grpc_server import "
                               "GrpcServer; s = GrpcServer(%d); s.start(); time.sleep(10**6)" % (ROOT, port)])
    try:
        bench.wait_port(port)
    except BaseException:
        server.terminate()
        raise
    from tests.support.grpc_server import compile_descriptors

    descriptors = compile_descriptors(workdir)
    th = bench.Tollhouse(workdir, port, bench.PROXY_CPUS, route_extra="""  - name: shop
    match: {prefix: /shop.Inventory/}
    upstream: shop
""", upstreams_extra=f"""  shop:
    protocol: grpc
    targets: ["grpc://127.0.0.1:{port}"]
""")

    def calls(target_port: int, seconds: int) -> float:
        # The client on the load core (the server's), as in protocols.run_grpc's direct runs.
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); "
                f"import protocols; print(protocols.grpc_direct({target_port}, {descriptors!r}, {seconds}))")
        out = subprocess.run(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c", code], capture_output=True,
                             text=True, check=True)
        return float(out.stdout.split()[-1])

    try:
        calls(th.port, 1)
        through, direct = [], []
        for _ in range(bench.ROUNDS):
            direct.append(calls(port, bench.DURATION))
            through.append(calls(th.port, bench.DURATION))
    finally:
        th.stop()
        server.terminate()
        server.wait()
    return {"through": statistics.median(through), "direct": statistics.median(direct),
            "ratios": [t / d for t, d in zip(through, direct)]}


def render(h2: dict, grpc: dict | None) -> list[str]:
    lines = ["", f"HTTP/2 (h2c, prior knowledge), plain route, {bench.CONNS} connections, load from h2load; "
             "nginx `listen … http2` proxying the same upstream:", "",
             "| streams per connection | nginx req/s | tollhouse req/s | ratio (aim) | failed |", "|---|---|---|---|---|"]
    aims = {10: "≥ 1.0", 1: "≥ 0.8"}
    for s in STREAMS:
        r = h2[s]
        lines.append(f"| {s} | {r['nginx']:.0f} | {r['tollhouse']:.0f} | {bench.spread(r['ratios'])} ({aims[s]}) | "
                     f"{r['failed']} |")
    lines += ["", f"Tollhouse CPU per request: HTTP/2 (10 streams) {h2['cpu_h2']:.1f} µs, HTTP/1.1 (wrk) "
              f"{h2['cpu_h1']:.1f} µs: ratio {bench.spread(h2['cpu_ratios'])} (aim ≤ 1.1)"]
    if grpc is not None:
        lines += ["", f"gRPC unary passthrough (GetItem, one grpcio client process): {grpc['through']:.0f} calls/s "
                  f"through Tollhouse vs {grpc['direct']:.0f} direct, ratio {bench.spread(grpc['ratios'])}"]
    return lines


def main() -> int:
    for tool in ("nginx", "wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is missing (make bench installs it when run as root)", file=sys.stderr)
            return 1
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-h2-")
    upstream, upstream_port = bench.start_upstream(workdir)
    try:
        h2 = run_http2(workdir, upstream_port)
    finally:
        upstream.terminate()
        upstream.wait()
    grpc = run_grpc_passthrough(workdir) if not os.environ.get("BENCH_SKIP_PROTOCOLS") else None
    print("\n".join(render(h2, grpc)))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
