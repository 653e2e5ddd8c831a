"""Workers scaling (issue 23): `workers: 1, 2, 4, 8` on cores of their own, the load
generator (wrk) and the upstream on other cores. Meant for a machine with >= 16 cores:
gateway on cores 0-7, upstream (PROCS Python processes sharing the port) on 8-11,
wrk on 12-15.

usage: python bench/scaling.py [WORKERS,...]   (default 1,2,4,8)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from run import free_port, wait_port  # noqa: E402   (bench/run.py's, stdlib only)
BODY = b'{"id":12345,"name":"Ada Lovelace","email":"ada@example.com","roles":["admin","author"]}'
UPSTREAM = f"""
import asyncio, socket, sys, uvloop
RESPONSE = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: {len(BODY)}\\r\\n\\r\\n" + {BODY!r}
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        n = self.buf.count(b"\\r\\n\\r\\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\\r\\n\\r\\n") + 4:]
            self.t.write(RESPONSE * n)
async def main():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("127.0.0.1", int(sys.argv[1])))
    srv = await asyncio.get_running_loop().create_server(P, sock=s, backlog=4096)
    await srv.serve_forever()
uvloop.run(main())
"""
GATEWAY_CPUS = os.environ.get("SCALING_GATEWAY_CPUS", "0-7")
UPSTREAM_CPUS = os.environ.get("SCALING_UPSTREAM_CPUS", "8,9,10,11").split(",")
LOAD_CPUS = os.environ.get("SCALING_LOAD_CPUS", "12-15")
DURATION, ROUNDS = int(os.environ.get("BENCH_DURATION", "5")), int(os.environ.get("BENCH_ROUNDS", "3"))


def wrk(port: int, conns: int, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CPUS, os.environ.get("WRK", "wrk"), "-t4", f"-c{conns}",
                          f"-d{seconds}s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> int:
    counts = [int(n) for n in (sys.argv[1] if len(sys.argv) > 1 else "1,2,4,8").split(",")]
    up_port = free_port()
    ups = [subprocess.Popen(["taskset", "-c", str(c), sys.executable, "-c", UPSTREAM, str(up_port)])
           for c in UPSTREAM_CPUS]
    wait_port(up_port)
    print(f"direct upstream: {wrk(up_port, 256, DURATION):.0f} req/s (its ceiling)", flush=True)
    work = tempfile.mkdtemp()
    rows = []
    for n in counts:
        port, admin = free_port(), free_port()
        path = os.path.join(work, f"g{n}.yaml")
        with open(path, "w") as f:
            f.write(f"listen: 127.0.0.1:{port}\nworkers: {n}\nadmin: {{listen: '127.0.0.1:{admin}'}}\n"
                    f"access_log: true\nupstreams:\n  app:\n    targets: ['http://127.0.0.1:{up_port}']\n"
                    f"    max_connections: 1024\nroutes:\n  - name: plain\n    match: {{prefix: /}}\n    upstream: app\n")
        cpus = GATEWAY_CPUS if n > 1 else GATEWAY_CPUS.split("-")[0].split(",")[0]
        g = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "tollhouse", "run", "-c", path],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"g{n}.log"), "wb"),
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 p for p in (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH")) if p)})
        try:
            wait_port(port)
            time.sleep(1.5)
            wrk(port, 50 * n, 1)
            runs = [wrk(port, 50 * n, DURATION) for _ in range(ROUNDS)]
        finally:
            g.terminate()
            g.wait(30)
        runs.sort()
        rows.append((n, runs[len(runs) // 2], runs))
        print(f"workers={n}: median {runs[len(runs) // 2]:.0f} req/s, rounds {[round(r) for r in runs]}", flush=True)
    base = rows[0][1]
    print("\n| workers | req/s (median) | rounds | per-worker efficiency |\n|---|---|---|---|")
    for n, rps, runs in rows:
        print(f"| {n} | {rps:.0f} | {min(runs):.0f}–{max(runs):.0f} | {rps / (base * n):.2f} |")
    for u in ups:
        u.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
