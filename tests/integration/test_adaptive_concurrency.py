"""Adaptive concurrency (docs/upstreams.md, "Adaptive concurrency"): a real upstream that
serves at most 4 requests at once (the rest queue inside it) is offered six times that;
the gateway learns a limit near the upstream's capacity, sheds the excess with 503 and
Retry-After (free before premium), keeps the admitted requests' latency near the
upstream's own, and follows the upstream when it grows."""
import re
import threading
import time

import pytest

from tests.support.capacity_upstream import CapacityUpstream
from tests.support.client import request

SERVICE = 0.02   # seconds per request inside the upstream

CONFIG = """
consumers:
  - {{id: gold, tier: premium, api_keys: [gold-key]}}
  - {{id: cheap, tier: free, api_keys: [free-key]}}
tiers:
  premium: {{rate_limits: [{{limit: 1000000, window: 1s}}]}}
  free: {{rate_limits: [{{limit: 1000000, window: 1s}}]}}
auth:
  providers:
    keys: {{type: api_key, header: X-API-Key}}
upstreams:
  app:
    targets: ["{upstream}"]
    concurrency: adaptive
    adaptive: {{initial_limit: 20, queue: 8, queue_timeout: 30ms, window: 50ms, probe_interval: 2s, tiers: [premium]}}
routes:
  - {{name: api, match: {{prefix: /}}, upstream: app, auth: {{providers: [keys]}}}}
"""


@pytest.fixture
def upstream():
    u = CapacityUpstream(capacity=4, service=SERVICE).start()
    yield u
    u.stop()


def metric(g, pattern: str) -> float:
    found = re.findall(pattern + r" ([\d.e+-]+)", g.get_admin("/metrics")[1].decode())
    return sum(float(v) for v in found)


def offer(g, clients: dict, seconds: float) -> dict:
    """`clients`: API key -> threads sending back to back. -> key -> [(status, latency, retry-after)]."""
    results = {key: [] for key in clients}
    stop = time.monotonic() + seconds

    def loop(key):
        while time.monotonic() < stop:
            started = time.monotonic()
            r = request(g.port, f"GET /x HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n\r\n".encode())
            results[key].append((r.status, time.monotonic() - started, r.getheader("retry-after")))

    threads = [threading.Thread(target=loop, args=(key,)) for key, n in clients.items() for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_overload_is_shed_and_the_limit_follows_the_upstream(gateway_factory, upstream):
    g = gateway_factory(CONFIG.format(upstream=upstream.url))
    results = offer(g, {"gold-key": 8, "free-key": 16}, 4.0)   # 24 at once: six times the capacity
    every = [r for rs in results.values() for r in rs]
    assert {s for s, _, _ in every} <= {200, 503}
    shed = [r for r in every if r[0] == 503]
    assert shed and all(retry == "1" for _, _, retry in shed)
    # The learnt limit sits near the upstream's capacity (4, plus the 25% latency buffer and headroom), under 24.
    limit = metric(g, r'tollhouse_upstream_concurrency_limit\{upstream="app"\}')
    assert 2 <= limit <= 16, limit
    # Admitted requests wait little beyond the upstream's own service time.
    admitted = sorted(t for s, t, _ in every if s == 200)
    assert admitted[len(admitted) // 2] < 4 * SERVICE, admitted[len(admitted) // 2]
    # Free is shed before premium: a premium request is shed far less often.
    rate = {key: sum(1 for s, _, _ in rs if s == 503) / len(rs) for key, rs in results.items()}
    assert rate["gold-key"] < rate["free-key"] / 2, rate
    assert metric(g, r'tollhouse_upstream_shed_total\{tier="free",upstream="app"\}') > \
        metric(g, r'tollhouse_upstream_shed_total\{tier="premium",upstream="app"\}')
    # Goodput stays near the upstream's capacity (4 / 20 ms = 200 per second).
    good = sum(1 for s, _, _ in every if s == 200) / 4.0
    assert good >= 0.7 * 4 / SERVICE, good   # probes (at min_limit) and the test's own clients take some
    # The upstream grows to three times the capacity: the limit follows it up within seconds.
    upstream.capacity = 12
    offer(g, {"gold-key": 8, "free-key": 16}, 3.0)
    assert metric(g, r'tollhouse_upstream_concurrency_limit\{upstream="app"\}') > limit + 3


def test_a_request_over_the_limit_with_no_room_to_wait_is_shed_at_once(gateway_factory, upstream):
    g = gateway_factory(CONFIG.format(upstream=upstream.url).replace(
        "initial_limit: 20, queue: 8", "initial_limit: 1, min_limit: 1, max_limit: 1, queue: 0").replace(
        "window: 50ms", "window: 10s"))
    results = offer(g, {"free-key": 6}, 1.0)
    statuses = [s for s, _, _ in results["free-key"]]
    assert statuses.count(503) > statuses.count(200) > 0
