"""Several regions on this machine: each its own redis-server and Tollhouse, the
regions' stores as each other's peers (tests/integration/test_regions.py, bench/regions.py)."""
from __future__ import annotations

from tests.support.processes import Gateway, RedisServer

NAMES = ("eu", "us", "ap")


def region_config(name: str, stores: dict, upstream_url: str, limit: int, window: str, sync_interval: str,
                  on_partition: str = "share", algorithm: str = "fixed_window", extra: str = "", mode: str = "gcounter",
                  partition_after: str = "1s", peer_urls: dict | None = None) -> str:
    """`peer_urls` (name -> URL) is how this region reaches the others' stores (default: `stores`)."""
    peers = ", ".join(f"{n}: {url}" for n, url in (peer_urls or stores).items() if n != name)
    return f"""
store: {stores[name]}
access_log: false
regions: {{name: {name}, peers: {{{peers}}}, sync_interval: {sync_interval}, on_partition: {on_partition},
          partition_after: {partition_after}}}
upstreams:
  app: {{targets: ["{upstream_url}"]}}
routes:
  - name: limited
    match: {{prefix: /g}}
    upstream: app
    rate_limits: [{{limit: {limit}, window: {window}, key: global, scope: global, algorithm: {algorithm},
                   mode: {mode}}}]
  - name: open
    match: {{prefix: /}}
    upstream: app
{extra}
"""


class Regions:
    """`Regions(n, upstream_url, limit=..., window=..., sync_interval=...)`; `.gateways`, `.redis` by name.

    With `lag` (seconds), each region reaches each other region's store through a LagProxy
    of its own (`.links[(from, to)]`): every byte between regions arrives `lag` late."""

    def __init__(self, count: int, upstream_url: str, lag: float | None = None, **options):
        from tests.support.lag_proxy import LagProxy

        self.names = NAMES[:count]
        self.redis = {n: RedisServer().start() for n in self.names}
        stores = {n: r.url for n, r in self.redis.items()}
        self.links = {}
        if lag is not None:
            self.links = {(a, b): LagProxy(self.redis[b].port, lag).start()
                          for a in self.names for b in self.names if a != b}
        self.gateways = {}
        for n in self.names:
            peer_urls = {b: self.links[(n, b)].url for b in self.names if b != n} if self.links else None
            self.gateways[n] = Gateway(region_config(n, stores, upstream_url, peer_urls=peer_urls, **options))
        for g in self.gateways.values():
            g.start()

    def cut(self, region: str) -> None:
        """A partition: `region` can neither reach nor be reached by the others (needs `lag`)."""
        for (a, b), link in self.links.items():
            if region in (a, b):
                link.cut()

    def mend(self, region: str) -> None:
        for (a, b), link in self.links.items():
            if region in (a, b):
                link.mend()

    def cleanup(self) -> None:
        for g in self.gateways.values():
            g.cleanup()
        for link in self.links.values():
            link.stop()
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
            records.append(await _one(reader, writer, request))
    finally:
        writer.close()


async def _one(reader, writer, request: bytes) -> tuple[float, int]:
    """One request on a keep-alive connection: (mid time, status)."""
    import time

    sent = time.time()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return (sent + time.time()) / 2, int(head[9:12])


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


async def _paced(port: int, rate: float, stop_at: float, records: list, path: bytes = b"/g/x") -> None:
    """One request every 1/rate seconds on one keep-alive connection (a late answer delays
    the next request, never adds one); records (mid time, status)."""
    import asyncio
    import time

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path
    due = time.time()
    try:
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.time()))
            due += 1 / rate
            records.append(await _one(reader, writer, request))
    finally:
        writer.close()


def uneven(ports: dict, rates: dict, seconds: float) -> dict:
    """Offered load at a fixed rate per region (`rates`: name -> requests per second) for
    `seconds`: name -> [(time, status)]."""
    import asyncio
    import time

    records = {name: [] for name in ports}

    async def go():
        stop_at = time.time() + seconds
        await asyncio.gather(*(_paced(ports[name], rates[name], stop_at, records[name]) for name in ports))
    asyncio.run(go())
    return records


class WindowCounts:
    """Each region's admissions per window of the global limit, as its own store counts them
    (no client-side timing at window edges): polled every 20 ms while in a `with` block.
    A store keeps `w` (its current window), `c` (its count in it) and `p` (the count of the
    window before, exact once the window has turned)."""

    def __init__(self, regions: "Regions", window: float):
        import threading

        import redis

        self.stores = {n: redis.Redis(port=r.port) for n, r in regions.redis.items()}
        self.window_ms = int(window * 1000)
        self.counts: dict = {}   # (region, window index) -> admitted
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "WindowCounts":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _poll(self) -> None:
        import redis

        while not self.stop.wait(0.02):
            for name, store in self.stores.items():
                try:
                    keys = [k for k in store.scan_iter(b"th:rl:v1:{global}:global:*") if not k.endswith(b":regions")]
                    for key in keys:
                        w, c, p = store.hmget(key, "w", "c", "p")
                        if w is None:
                            continue
                        w = int(w)
                        for at, n in ((w, int(c or 0)), (w - 1, int(p or 0))):
                            self.counts[(name, at)] = max(self.counts.get((name, at), 0), n)
                except (redis.RedisError, OSError):
                    pass   # that store is down (a partition test): its counts stop

    def rows(self, first: float, last: float, limit: int) -> list[dict]:
        """Per whole window between the times `first` and `last`: admitted per region, total,
        excess over `limit` and utilisation (total ÷ limit)."""
        import math

        rows = []
        names = sorted(self.stores)
        for w in range(math.ceil(first * 1000 / self.window_ms), math.floor(last * 1000 / self.window_ms)):
            by_region = {n: self.counts.get((n, w), 0) for n in names}
            total = sum(by_region.values())
            rows.append({"window": w, "by_region": by_region, "admitted": total, "excess": max(0, total - limit),
                         "utilisation": total / limit})
        return rows
