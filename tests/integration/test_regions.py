"""Global rate limits across regions (docs/regions.md): three regions on this machine,
each its own redis-server and gateway, with real syncing between the stores."""
import json

import pytest
import redis

from tests.support.client import request
from tests.support.processes import wait_for
from tests.support.regions import Regions


def get(g, path="/g/x"):
    return request(g.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()).status


@pytest.fixture
def regions(upstream):
    r = Regions(3, upstream.url, limit=12, window="1m", sync_interval="100ms")
    yield r
    r.cleanup()


def status(g) -> dict:
    return json.loads(g.get_admin("/status")[1])["store"]["regions"]


def components(r: Regions, region: str) -> dict:
    """The other regions' counts this region's store holds (region -> count)."""
    store = redis.Redis.from_url(r.redis[region].url)
    found = {}
    for k in store.scan_iter("*:regions"):
        for f, v in store.hgetall(k).items():
            found[f.decode()] = int(v.split(b":")[1])
    return found


def test_a_global_limit_is_shared_by_the_regions(regions):
    eu, us, ap = (regions.gateways[n] for n in ("eu", "us", "ap"))
    wait_for(lambda: all(p["lag_seconds"] is not None for g in (eu, us, ap) for p in status(g)["peers"].values()),
             timeout=10)
    assert [get(eu) for _ in range(5)] == [200] * 5
    wait_for(lambda: components(regions, "us") == {"eu": 5}, timeout=5)   # one sync later, us knows eu's 5
    assert [get(us) for _ in range(4)] == [200] * 4
    wait_for(lambda: components(regions, "ap") == {"eu": 5, "us": 4}, timeout=5)
    # 9 admitted so far: ap has room for 3 more of the 12, then the global limit holds.
    assert [get(ap) for _ in range(5)] == [200, 200, 200, 429, 429]
    wait_for(lambda: components(regions, "eu") == {"us": 4, "ap": 3}, timeout=5)
    wait_for(lambda: components(regions, "us") == {"eu": 5, "ap": 3}, timeout=5)
    assert get(eu) == 429 and get(us) == 429
    # Every region holds the others' components (a G-counter: each writes only its own).
    assert components(regions, "ap") == {"eu": 5, "us": 4}
    # Peers count as up while their heartbeats are fresher than partition_after (1 s): on a
    # loaded machine a sync can come late, so the state is awaited, not sampled once.
    metrics = wait_for(lambda: (m := eu.get_admin("/metrics")[1].decode()) and
                       'tollhouse_region_peer_up{peer="us"} 1.0' in m and 'tollhouse_region_peer_up{peer="ap"} 1.0' in m
                       and m, timeout=10)
    assert "tollhouse_region_sync_lag_seconds{peer=\"us\"}" in metrics
    assert 'tollhouse_region_overadmission_bound{limit="limited:global-60s"}' in metrics
    st = wait_for(lambda: (s := status(eu)) and not s["partitioned"] and s, timeout=10)
    assert st["name"] == "eu" and st["peers"]["us"]["up"] is True
    assert 0 <= st["peers"]["us"]["lag_seconds"] < 1


def test_a_partitioned_peer_shares_the_limit_and_merges_when_back(regions):
    eu, us, ap = (regions.gateways[n] for n in ("eu", "us", "ap"))
    wait_for(lambda: all(p["lag_seconds"] is not None for p in status(eu)["peers"].values()), timeout=10)
    assert [get(eu, "/g/a") for _ in range(2)] == [200, 200]
    wait_for(lambda: components(regions, "ap") == {"eu": 2}, timeout=5)
    regions.redis["ap"].kill()   # ap's store is gone: eu and us cannot write to it
    wait_for(lambda: status(eu)["partitioned"] and status(us)["partitioned"], timeout=10)
    assert status(eu)["in_force"] == "share" and status(eu)["peers"]["ap"]["up"] is False
    metrics = eu.get_admin("/metrics")[1].decode()
    assert 'tollhouse_region_peer_up{peer="ap"} 0.0' in metrics
    # on_partition: share: eu admits at most its share of 12 across 3 regions, 4, of its own.
    assert [get(eu, "/g/a") for _ in range(3)] == [200, 200, 429]
    # ap's store comes back empty: eu and us send it every count they know, nothing is lost.
    regions.redis["ap"].start()
    wait_for(lambda: not status(eu)["partitioned"], timeout=15)
    wait_for(lambda: components(regions, "ap") == {"eu": 4}, timeout=10)


def test_over_admission_stays_within_the_bound_at_200ms(upstream):
    """An adversary spreading requests over three regions (L = 200 ms injected as the
    sync interval): each window's excess over the limit stays within Σ over the other
    regions of (their admission rate × L) + 1, with a margin for the measurement. The
    admissions are counted by the stores themselves (a client's clock puts a request near a
    window's edge in either window); the bound takes the offered rates the clients saw."""
    import time

    from tests.support.regions import WindowCounts, adversary, excess_per_window

    regions = Regions(3, upstream.url, limit=50, window="2s", sync_interval="200ms")
    try:
        wait_for(lambda: all(p["lag_seconds"] is not None for p in status(regions.gateways["eu"])["peers"].values()),
                 timeout=10)
        with WindowCounts(regions, 2.0) as counts:
            start = time.time()
            records = adversary({n: g.port for n, g in regions.gateways.items()}, 2 * 3.2, connections=2)
            end = time.time()
            time.sleep(0.3)   # the last window's counts read
        bounds = {row["window"]: row["bound"] for row in excess_per_window(records, 50, 2.0, 0.2)}
        rows = counts.rows(start, end, 50)
    finally:
        regions.cleanup()
    assert len(rows) >= 2
    for row in rows:
        assert 50 <= row["admitted"] <= 3 * 50, row      # the limit bites, and no region exceeds its own count
        assert row["excess"] <= 1.2 * bounds.get(row["window"], max(bounds.values())) + 5, row


def test_escrow_lends_unused_share_and_never_admits_more_than_the_limit(upstream):
    """mode: escrow, 50 ms between regions: eu takes most of the load and borrows what us and
    ap do not need; in every window the three stores together admit at most the limit."""
    import time

    from tests.support.regions import WindowCounts, uneven

    limit, window = 30, 2.0   # shares: 10 each
    regions = Regions(3, upstream.url, limit=limit, window="2s", sync_interval="50ms", mode="escrow", lag=0.05)
    try:
        eu = regions.gateways["eu"]
        wait_for(lambda: all(p["lag_seconds"] is not None for p in status(eu)["peers"].values()), timeout=10)
        assert status(eu)["escrow_shares"] == {"limited:global-2s": {"eu": 10, "us": 10, "ap": 10}}
        with WindowCounts(regions, window) as counts:
            start = time.time()
            records = uneven({n: g.port for n, g in regions.gateways.items()}, {"eu": 30, "us": 2, "ap": 2},
                             window * 4.5)
            end = time.time()
            time.sleep(0.3)   # the last window's counts read
        rows = counts.rows(start, end, limit)
        metrics = eu.get_admin("/metrics")[1].decode()
    finally:
        regions.cleanup()
    assert len(rows) >= 3, rows
    for row in rows:
        assert row["admitted"] <= limit, row                       # zero over-admission
        assert row["by_region"]["us"] <= 10 and row["by_region"]["ap"] <= 10, row
    # eu borrowed: more than its own 10 in every whole window, and more used in all than the
    # 10 + 4 + 4 = 18 that shares alone allow.
    assert all(row["by_region"]["eu"] > 10 for row in rows), rows
    assert sorted(row["admitted"] for row in rows)[len(rows) // 2] >= 22, rows
    assert 'tollhouse_region_escrow_borrowed_total{limit="limited:global-2s",peer="us"}' in metrics
    # The clients saw it too: 429s only where the windows were used up.
    statuses = [s for rows_ in records.values() for _, s in rows_]
    assert set(statuses) == {200, 429}


def test_an_escrow_region_cut_off_keeps_only_what_it_holds(upstream):
    """A partition: ap can reach no peer and no peer reaches it. ap admits at most its own
    share; eu borrows from us alone; no window passes the limit, before, during or after."""
    import time

    from tests.support.regions import WindowCounts, uneven

    limit, window = 30, 2.0
    regions = Regions(3, upstream.url, limit=limit, window="2s", sync_interval="50ms", mode="escrow", lag=0.02)
    ports = {n: g.port for n, g in regions.gateways.items()}
    try:
        wait_for(lambda: all(p["lag_seconds"] is not None for p in status(regions.gateways["eu"])["peers"].values()),
                 timeout=10)
        with WindowCounts(regions, window) as counts:
            regions.cut("ap")
            start = time.time()
            uneven(ports, {"eu": 30, "us": 2, "ap": 20}, window * 3.5)
            end = time.time()
            regions.mend("ap")
            time.sleep(0.3)
        rows = counts.rows(start, end, limit)
    finally:
        regions.cleanup()
    assert len(rows) >= 2, rows
    for row in rows:
        assert row["admitted"] <= limit, row
        assert row["by_region"]["ap"] <= 10, row                   # its share, nothing borrowed
        assert row["by_region"]["eu"] <= 10 + 10, row              # its share and us's spare at most
    assert any(row["by_region"]["eu"] > 10 for row in rows), rows  # us still lends to eu
