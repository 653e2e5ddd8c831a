"""Several regions on this machine: each its own redis-server and Tollhouse, the
regions' stores as each other's peers (tests/integration/test_regions.py, bench/regions.py)."""
from __future__ import annotations

from tests.support.processes import Gateway, RedisServer

NAMES = ("eu", "us", "ap")


def region_config(name: str, stores: dict, upstream_url: str, limit: int, window: str, sync_interval: str,
                  on_partition: str = "share", algorithm: str = "fixed_window", extra: str = "") -> str:
    peers = ", ".join(f"{n}: {url}" for n, url in stores.items() if n != name)
    return f"""
store: {stores[name]}
access_log: false
regions: {{name: {name}, peers: {{{peers}}}, sync_interval: {sync_interval}, on_partition: {on_partition},
          partition_after: 1s}}
upstreams:
  app: {{targets: ["{upstream_url}"]}}
routes:
  - name: limited
    match: {{prefix: /g}}
    upstream: app
    rate_limits: [{{limit: {limit}, window: {window}, key: global, scope: global, algorithm: {algorithm}}}]
  - name: open
    match: {{prefix: /}}
    upstream: app
{extra}
"""


class Regions:
    """`Regions(n, upstream_url, limit=..., window=..., sync_interval=...)`; `.gateways`, `.redis` by name."""

    def __init__(self, count: int, upstream_url: str, **options):
        self.names = NAMES[:count]
        self.redis = {n: RedisServer().start() for n in self.names}
        stores = {n: r.url for n, r in self.redis.items()}
        self.gateways = {n: Gateway(region_config(n, stores, upstream_url, **options)) for n in self.names}
        for g in self.gateways.values():
            g.start()

    def cleanup(self) -> None:
        for g in self.gateways.values():
            g.cleanup()
        for r in self.redis.values():
            r.cleanup()


async def _hammer(port: int, stop_at: float, records: list, path: bytes = b"/g/x") -> None:
    """Requests back to back on one keep-alive connection; records (mid time, status)."""
    import asyncio
    import time

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path
    try:
        while time.time() < stop_at:
            sent = time.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            records.append(((sent + time.time()) / 2, status))
    finally:
        writer.close()


def adversary(ports: dict, seconds: float, connections: int = 3) -> dict:
    """Load spread evenly over the regions (the same connections to each) for `seconds`:
    name -> [(time, status)]."""
    import asyncio
    import time

    records = {name: [] for name in ports}

    async def go():
        stop_at = time.time() + seconds
        await asyncio.gather(*(_hammer(port, stop_at, records[name]) for name, port in ports.items()
                               for _ in range(connections)))
    asyncio.run(go())
    return records


def excess_per_window(records: dict, limit: int, window: float, lag: float) -> list[dict]:
    """Per whole window: admissions in all regions, the excess over the limit, and the bound
    Σ over the other regions of (their admission rate × lag) + 1, taken for the region
    where it is largest. Rates are each region's offered rate in that window: while a
    window still admits, every request is admitted. Partial first and last windows are left out."""
    import math

    times = [t for rows in records.values() for t, _ in rows]
    first, last = math.ceil(min(times) / window), math.floor(max(times) / window) - 1
    rows = []
    for w in range(first, last + 1):
        lo, hi = w * window, (w + 1) * window
        admitted = {n: sum(1 for t, s in r if lo <= t < hi and s == 200) for n, r in records.items()}
        offered = {n: sum(1 for t, s in r if lo <= t < hi) / window for n, r in records.items()}
        bound = max(sum(offered[q] * lag for q in records if q != r) for r in records) + 1
        total = sum(admitted.values())
        rows.append({"window": w, "admitted": total, "excess": max(0, total - limit), "bound": bound,
                     "by_region": admitted, "rate": sum(offered.values())})
    return rows
