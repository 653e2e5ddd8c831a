"""The over-admission of a global limit across three regions, measured (issue 21, docs/regions.md).

Three regions on this machine, each its own redis-server and Tollhouse, with the
replication lag L injected as the regions' sync_interval (a region's admissions
reach the others within L plus one push). An adversary spreads requests evenly
over the regions, as fast as they answer, against one global fixed-window
limit. Per window: the admissions in all regions, the excess over the limit,
and the bound Σ over the other regions of (their admission rate × L) + 1.

Then `mode: escrow` against the G-counter under uneven load: each region reaches the
others' stores through a relay that delays every byte by L (one way), eu offers 80 %
of the load and us and ap 10 % each, 1.5 × the limit in all. Per window, what the three
stores admitted (read from the stores themselves), the excess over the limit, and the
utilisation (admitted ÷ limit, when demand exceeds it).

usage: python bench/regions.py [LAG_MS,...]   (default 50,200,1000)
       REGIONS_ONLY=escrow python bench/regions.py   (the uneven-load comparison alone)
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "src"))

from tests.support.regions import Regions, adversary, excess_per_window  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402

LIMIT, WINDOW, WINDOWS = 100, 2.0, int(os.environ.get("REGIONS_WINDOWS", "5"))


def run(lag_ms: int, upstream_url: str) -> list[dict]:
    regions = Regions(3, upstream_url, limit=LIMIT, window=f"{int(WINDOW)}s", sync_interval=f"{lag_ms}ms")
    try:
        import time

        time.sleep(2)   # the regions' first heartbeats
        records = adversary({n: g.port for n, g in regions.gateways.items()}, WINDOW * (WINDOWS + 1.5))
        return excess_per_window(records, LIMIT, WINDOW, lag_ms / 1000)
    finally:
        regions.cleanup()


def partition(upstream_url: str, lag_ms: int = 200) -> list[tuple[str, list[dict]]]:
    """Windows before, during and after ap's redis-server is killed (then restarted empty)."""
    import time

    regions = Regions(3, upstream_url, limit=LIMIT, window=f"{int(WINDOW)}s", sync_interval=f"{lag_ms}ms")
    ports = {n: g.port for n, g in regions.gateways.items()}
    phases = []
    try:
        time.sleep(2)
        phases.append(("all up", excess_per_window(adversary(ports, WINDOW * 3.5), LIMIT, WINDOW, lag_ms / 1000)))
        regions.redis["ap"].kill()
        time.sleep(1.5)   # eu and us notice (partition_after: 1s)
        phases.append(("ap's store down", excess_per_window(adversary(ports, WINDOW * 3.5), LIMIT, WINDOW,
                                                            lag_ms / 1000)))
        regions.redis["ap"].start()
        time.sleep(2)
        phases.append(("ap's store back (empty)", excess_per_window(adversary(ports, WINDOW * 3.5), LIMIT, WINDOW,
                                                                    lag_ms / 1000)))
    finally:
        regions.cleanup()
    return phases


def uneven_run(lag_ms: int, upstream_url: str, mode: str) -> list[dict]:
    """Windows of one mode under uneven load, L = lag_ms one way between the regions."""
    import time

    from tests.support.regions import WindowCounts, uneven

    lag = lag_ms / 1000
    regions = Regions(3, upstream_url, limit=LIMIT, window=f"{int(WINDOW)}s", sync_interval="50ms", mode=mode,
                      lag=lag, partition_after=f"{int(20 * lag_ms + 1000)}ms")
    try:
        time.sleep(2 + 2 * lag)   # the regions' first heartbeats
        offered = 1.5 * LIMIT / WINDOW
        rates = {"eu": 0.8 * offered, "us": 0.1 * offered, "ap": 0.1 * offered}
        with WindowCounts(regions, WINDOW) as counts:
            start = time.time()
            uneven({n: g.port for n, g in regions.gateways.items()}, rates, WINDOW * (WINDOWS + 1.5))
            end = time.time()
            time.sleep(0.3)
        return counts.rows(start, end, LIMIT)
    finally:
        regions.cleanup()


def uneven_table(lags: list[int], upstream_url: str) -> None:
    print(f"\nUneven load: 1.5 × the limit offered ({1.5 * LIMIT / WINDOW:g} req/s), eu 80 %, us 10 %, ap 10 %; "
          "L one way through a delaying relay; sync_interval 50 ms\n")
    print("| mode | lag L | windows | admitted per window (eu / us / ap) | excess (max) | utilisation (median) |")
    print("|---|---|---|---|---|---|")
    for lag in lags:
        for mode in ("gcounter", "escrow"):
            rows = uneven_run(lag, upstream_url, mode)
            cells = "; ".join(f"{r['by_region']['eu']} / {r['by_region']['us']} / {r['by_region']['ap']}"
                              for r in rows)
            use = sorted(r["utilisation"] for r in rows)[len(rows) // 2]
            print(f"| {mode} | {lag} ms | {len(rows)} | {cells} | {max(r['excess'] for r in rows)} | "
                  f"{use:.0%} |", flush=True)


def main() -> int:
    lags = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "50,200,1000").split(",")]
    upstream = Upstream().start()
    print(f"limit {LIMIT} per {WINDOW:g} s window (fixed_window, scope: global), 3 regions, "
          f"{WINDOWS} whole windows per lag\n")
    print("| lag L | windows | offered req/s (all regions) | admitted per window | excess (max) | bound (at that window) | within |")  # noqa: E501 - a table header row
    print("|---|---|---|---|---|---|---|")
    try:
        if os.environ.get("REGIONS_ONLY") == "escrow":
            uneven_table(lags, upstream.url)
            return 0
        for lag in lags:
            rows = run(lag, upstream.url)
            worst = max(rows, key=lambda r: r["excess"] - r["bound"])
            ok = all(r["excess"] <= r["bound"] for r in rows)
            print(f"| {lag} ms | {len(rows)} | {sum(r['rate'] for r in rows) / len(rows):.0f} | "
                  f"{', '.join(str(r['admitted']) for r in rows)} | {max(r['excess'] for r in rows)} | "
                  f"{worst['bound']:.1f} | {'yes' if ok else 'NO'} |", flush=True)
        if not os.environ.get("REGIONS_SKIP_PARTITION"):
            print("\nPartition (L = 200 ms; on_partition: share, store_failure: open):\n")
            print("| phase | admitted per window (eu / us / ap) | total |\n|---|---|---|")
            for phase, rows in partition(upstream.url):
                cells = "; ".join(f"{r['by_region']['eu']} / {r['by_region']['us']} / {r['by_region']['ap']}"
                                  for r in rows)
                print(f"| {phase} | {cells} | {', '.join(str(r['admitted']) for r in rows)} |", flush=True)
        uneven_table(lags, upstream.url)
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
