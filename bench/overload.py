"""Overload benchmark (docs/upstreams.md, "Adaptive concurrency"; docs/benchmarks.md): an
upstream that serves at most CAPACITY requests at once (SERVICE seconds each; more queue
inside it: tests/support/capacity_upstream.py), offered three times that through
Tollhouse, without and with `concurrency: adaptive`, alternating rounds, the gateway on the
proxy core, the upstream and wrk on the load core.

Reported: goodput (2xx per second) against the upstream's capacity, nominal (CAPACITY /
SERVICE) and measured (wrk straight at the upstream with exactly CAPACITY connections: the
most it serves, its timers' slack included), and the p99 of the admitted requests (the
2xx answers' duration_ms in the gateway's access log: wrk's own p99 mixes in the fast
503s) against the upstream's own unloaded p99. Then one adaptive run in which
the upstream gets slower, then faster: the learnt limit, read every 250 ms, is plotted
into docs/img/adaptive-limit.png (matplotlib).
"""
from __future__ import annotations

import os
import re
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402

CAPACITY = 8
SERVICE = 0.01
PLOT = os.path.join(ROOT, "docs", "img", "adaptive-limit.png")


def start_upstream(port: int) -> subprocess.Popen:
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r}); from tests.support.capacity_upstream import "
            f"CapacityUpstream; u = CapacityUpstream({CAPACITY}, {SERVICE}); u.port = {port}; u.start(); "
            "time.sleep(10**6)")
    proc = subprocess.Popen(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c", code],
                            preexec_fn=bench._die_with_parent)
    bench.wait_port(port)
    return proc


def control(port: int, **values) -> None:
    query = "&".join(f"{k}={v}" for k, v in values.items())
    urllib.request.urlopen(f"http://127.0.0.1:{port}/_control?{query}", timeout=5).read()


def limit_now(admin_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    found = re.search(r'tollhouse_upstream_concurrency_limit\{upstream="adaptive"\} ([\d.e+-]+)', text)
    return float(found.group(1)) if found else float("nan")


def good_rps(result: dict, seconds: int) -> float:
    return result["rps"] - result["non2xx"] / seconds


class AccessLog:
    """The gateway's access log, read from where the last read stopped."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0

    def admitted_p99(self, route: str) -> float:
        """The p99 of the 2xx answers' duration_ms on `route` since the last call."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read().splitlines()
            self.offset = f.tell()
        durations = sorted(entry["duration_ms"] for entry in map(json.loads, lines)
                           if entry.get("route") == route and 200 <= entry["status"] < 300)
        return durations[int(len(durations) * 0.99)] if durations else float("nan")


def run(workdir: str) -> dict:
    port = bench.free_port()
    upstream = start_upstream(port)
    th = None
    log = AccessLog(os.path.join(workdir, "access.log"))
    try:
        th = bench.Tollhouse(workdir, port, bench.PROXY_CPUS, access_log=log.path, upstreams_extra=f"""  adaptive:
    targets: ["http://127.0.0.1:{port}"]
    concurrency: adaptive
    adaptive: {{queue: 16, queue_timeout: 5ms, window: 100ms, probe_interval: 5s}}
""", route_extra="""  - name: adaptive
    match: {prefix: /adaptive}
    upstream: adaptive
    strip_prefix: true
""")
        offered = 3 * CAPACITY
        unloaded = bench.wrk(port, "/", 1, 2)   # the upstream alone, one request at a time
        measured = [bench.wrk(port, "/", CAPACITY, bench.DURATION)["rps"] for _ in range(2)]   # exactly its capacity
        rows = {"plain": [], "adaptive": []}
        for rnd in range(bench.ROUNDS):
            log.admitted_p99("plain")   # skip what came before
            rows["plain"].append(bench.wrk(th.port, "/", offered, bench.DURATION))
            time.sleep(0.3)   # the log written
            rows["plain"][-1]["admitted_p99"] = log.admitted_p99("plain")
            rows["adaptive"].append(bench.wrk(th.port, "/adaptive/", offered, bench.DURATION))
            time.sleep(0.3)
            rows["adaptive"][-1]["admitted_p99"] = log.admitted_p99("adaptive")
            p, a = rows["plain"][-1], rows["adaptive"][-1]
            print(f"  round {rnd + 1}/{bench.ROUNDS}: goodput plain {good_rps(p, bench.DURATION):.0f}, "
                  f"adaptive {good_rps(a, bench.DURATION):.0f} /s; p99 of admitted plain {p['admitted_p99']:.1f} ms, "
                  f"adaptive {a['admitted_p99']:.1f} ms (wrk's, 503s included: {a['p99']:.1f})", flush=True)
        trace = follow(th, port, offered)
    finally:
        if th is not None:
            th.stop()
        upstream.terminate()
        upstream.wait()
    capacity = CAPACITY / SERVICE
    out = {"capacity": capacity, "measured": max(measured), "unloaded_p99": unloaded["p99"], "trace": trace}
    for name, results in rows.items():
        out[name] = {"goodput": statistics.median(good_rps(r, bench.DURATION) for r in results),
                     "p99": statistics.median(r["admitted_p99"] for r in results),
                     "wrk_p99": statistics.median(r["p99"] for r in results),
                     "shed": statistics.median(r["non2xx"] for r in results),
                     "runs": [(good_rps(r, bench.DURATION), r["admitted_p99"]) for r in results]}
    return out


def follow(th, port: int, offered: int) -> list:
    """One adaptive run of 15 s: the upstream slows to 2x SERVICE at 5 s, speeds to 0.5x at 10 s,
    while the limit is read every 250 ms. [(seconds, limit, phase)]."""
    trace, stop = [], threading.Event()
    load = threading.Thread(target=lambda: bench.wrk(th.port, "/adaptive/", offered, 15))
    started = time.monotonic()
    load.start()

    def sample():
        while not stop.is_set():
            trace.append((time.monotonic() - started, limit_now(th.admin_port)))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    time.sleep(5)
    control(port, service=SERVICE * 2)
    time.sleep(5)
    control(port, service=SERVICE / 2)
    load.join()
    stop.set()
    sampler.join()
    control(port, service=SERVICE)
    return trace


def plot(trace: list, path: str = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.plot([t for t, _ in trace], [v for _, v in trace], color="#1f77b4", label="learnt limit")
    ax.axhline(CAPACITY, color="#888", linestyle="--", label=f"upstream capacity ({CAPACITY} at once)")
    for at, text in ((5, f"service {SERVICE * 2000:g} ms"), (10, f"service {SERVICE * 500:g} ms")):
        ax.axvline(at, color="#d62728", linewidth=0.8)
        ax.text(at + 0.1, ax.get_ylim()[1] * 0.9, text, color="#d62728", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests in flight")
    ax.set_title(f"Adaptive concurrency: offered {3 * CAPACITY} at once, upstream serves {CAPACITY}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(r: dict) -> list[str]:
    p, a = r["plain"], r["adaptive"]
    lines = ["", f"Overload: an upstream serving {CAPACITY} requests at once ({SERVICE * 1000:g} ms each: nominal "
             f"capacity {r['capacity']:.0f}/s, measured {r['measured']:.0f}/s with exactly {CAPACITY} connections; "
             f"unloaded p99 {r['unloaded_p99']:.1f} ms), offered {3 * CAPACITY} at once:", "",
             "| | goodput /s | of measured capacity (aim ≥ 90 %) | of nominal | p99 of admitted ms | vs unloaded p99 "
             "(aim ≤ 2×) | wrk's p99 (503s too) | shed per run |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in (("without adaptive", p), ("concurrency: adaptive", a)):
        lines.append(f"| {label} | {row['goodput']:.0f} | {row['goodput'] / r['measured']:.0%} | "
                     f"{row['goodput'] / r['capacity']:.0%} | {row['p99']:.1f} | {row['p99'] / r['unloaded_p99']:.1f}× | "
                     f"{row['wrk_p99']:.1f} | {row['shed']:.0f} |")
    lines += ["", "Every round (goodput /s, p99 of admitted ms): without " +
              ", ".join(f"({g:.0f}, {q:.1f})" for g, q in p["runs"]) + "; adaptive " +
              ", ".join(f"({g:.0f}, {q:.1f})" for g, q in a["runs"]),
              "", "The learnt limit while the upstream slows down and speeds up: docs/img/adaptive-limit.png."]
    return lines


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-overload-")
    result = run(workdir)
    plot(result["trace"])
    print("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
