"""Interleaved A/B of two source trees on one policy scenario of bench/run.py.

    git worktree add /tmp/tollhouse-base HEAD        # the last commit, beside the working tree
    .venv/bin/python bench/ab.py /tmp/tollhouse-base . ratelimit-redis [ROUNDS] [SECONDS]

This machine's speed drifts by tens of percent within minutes, so two
`make bench` runs minutes apart cannot tell a 5 % change. Here both trees'
gateways run at once (same config, both pinned to the proxy core, one under
load at a time) and each round runs, seconds apart: A plain, A scenario,
B plain, B scenario. Printed: per tree, the median of the rounds'
scenario/plain ratios with every round's ratio, the gateway's CPU time
per request (from /proc, user + system) on both routes, and B's plain
req/s over A's per round (for changes to the core itself).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # noqa: E402


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def measure(gateway, path: str, seconds: int, headers) -> tuple[float, float]:
    """(req/s, CPU µs per request) of one wrk run."""
    before = cpu_ticks(gateway.proc.pid)
    result = bench.wrk(gateway.port, path, bench.CONNS, seconds, list(headers))
    ticks = cpu_ticks(gateway.proc.pid) - before
    requests = result["rps"] * seconds
    return result["rps"], ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1.0, requests)


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[3] not in bench.SCENARIOS:
        print(__doc__.strip(), "\nscenarios:", ", ".join(bench.SCENARIOS), file=sys.stderr)
        return 2
    trees = [os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])]
    sc = bench.SCENARIOS[sys.argv[3]]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    workdir = tempfile.mkdtemp(prefix="tollhouse-ab-")
    upstream, upstream_port = bench.start_upstream(workdir)
    procs = [upstream]
    gateways = []
    try:
        extra, headers = sc["extra"], sc["headers"]
        if sc["setup"] is not None:
            extra, headers = sc["setup"](workdir)
        if sc["needs_redis"]:
            redis, redis_port = bench.start_redis()
            procs.append(redis)
            extra = extra.replace("{redis_port}", str(redis_port))
        gateways = [bench.Tollhouse(workdir, upstream_port, bench.PROXY_CPUS, extra=extra,
                                    route_extra=sc["route_extra"], root=tree) for tree in trees]
        for g in gateways:   # warm-up
            bench.wrk(g.port, sc["path"], bench.CONNS, 1, list(headers))
        runs = {(i, route): [] for i in range(len(trees)) for route in ("plain", "scenario")}
        for r in range(rounds):
            for i, g in enumerate(gateways):
                runs[(i, "plain")].append(measure(g, "/plain", seconds, headers))
                runs[(i, "scenario")].append(measure(g, sc["path"], seconds, headers))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{'AB'[i]} {runs[(i, 'scenario')][-1][0] / runs[(i, 'plain')][-1][0]:.2f}" for i in range(len(trees))),
                flush=True)
        for i, tree in enumerate(trees):
            plain, scen = runs[(i, "plain")], runs[(i, "scenario")]
            ratios = [s[0] / p[0] for s, p in zip(scen, plain)]
            print(f"{'AB'[i]} {tree}: {sys.argv[3]} / plain median {statistics.median(ratios):.3f} "
                  f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)}); CPU µs/request plain "
                  f"{statistics.median(p[1] for p in plain):.1f}, {sys.argv[3]} {statistics.median(s[1] for s in scen):.1f}")
        if len(trees) == 2:
            plain_ratios = [b[0] / a[0] for a, b in zip(runs[(0, "plain")], runs[(1, "plain")])]
            print(f"plain route, B / A req/s: median {statistics.median(plain_ratios):.3f} "
                  f"(rounds: {' '.join(f'{x:.2f}' for x in plain_ratios)}); req/s A "
                  f"{statistics.median(p[0] for p in runs[(0, 'plain')]):.0f}, B "
                  f"{statistics.median(p[0] for p in runs[(1, 'plain')]):.0f}")
    finally:
        for g in gateways:
            g.stop()
        for p in procs:
            p.terminate()
            p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
