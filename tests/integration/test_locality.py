"""Regional routing with failover (docs/regions.md, "Regional routing"): real upstreams
labelled in three regions; local targets are killed one by one and the share of traffic
each region gets is checked against Envoy's formula at each step, with retries on and no
failed request, then the targets come back and so does the traffic."""
import json
import re

import pytest

from tests.support.client import request
from tests.support.processes import wait_for
from tests.support.upstream import Upstream

REGIONS = {"eu": 4, "us": 2, "ap": 2}


@pytest.fixture
def fleet():
    ups = {region: [Upstream().start() for _ in range(n)] for region, n in REGIONS.items()}
    yield ups
    for group in ups.values():
        for u in group:
            u.stop()


def config(fleet) -> str:
    targets = ", ".join(f'{{url: "{u.url}", region: {region}, zone: {region}-a}}'
                        for region, group in fleet.items() for u in group)
    return f"""
access_log: true
upstreams:
  app:
    targets: [{targets}]
    locality: {{local: eu, failover: [us, ap], overprovisioning: 1.4}}
    health_check: {{path: /healthz, interval: 0.1s, timeout: 0.5s, healthy: 1, unhealthy: 1}}
    retries: {{attempts: 4, on: [connect_error, reset]}}
routes:
  - {{name: api, match: {{prefix: /}}, upstream: app}}
"""


def expected(healthy_eu: int, healthy_us: int, healthy_ap: int) -> dict:
    """Envoy's priority load with overprovisioning 1.4 (docs/regions.md)."""
    health = [min(1.0, 1.4 * h / t) for h, t in ((healthy_eu, 4), (healthy_us, 2), (healthy_ap, 2))]
    total = min(1.0, sum(health))
    out, left = [], 1.0
    for h in health:
        share = min(left, h / total) if total else 0.0
        out.append(share)
        left -= share
    return dict(zip(("eu", "us", "ap"), out))


def shares_exported(g) -> dict:
    text = g.get_admin("/metrics")[1].decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'tollhouse_upstream_locality_share\{region="(\w+)",upstream="app"\} ([\d.e+-]+)', text)}


def _served(group) -> int:
    return sum(1 for u in group for r in u.requests if r["target"] == "/x")   # not the health checks


def send(g, fleet, n: int) -> dict:
    before = {region: _served(group) for region, group in fleet.items()}
    for _ in range(n):
        assert request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200   # no request fails
    return {region: (_served(group) - before[region]) / n for region, group in fleet.items()}


def test_traffic_spills_region_by_region_as_local_targets_fail_and_comes_back(gateway_factory, fleet):
    g = gateway_factory(config(fleet))
    steps = [(4, 2, 2), (3, 2, 2), (2, 2, 2), (1, 2, 2), (0, 2, 2), (0, 1, 2), (0, 0, 2)]
    killed = []
    for step, (eu, us, ap) in enumerate(steps):
        if step:
            # The next target down: the local region's first, then the first failover region's.
            region = "eu" if eu < steps[step - 1][0] else "us"
            victim = next(u for u in fleet[region] if u not in killed)
            victim.stop()
            killed.append(victim)
        want = expected(eu, us, ap)
        wait_for(lambda want=want: all(abs(shares_exported(g).get(r, 0) - v) < 1e-6 for r, v in want.items()),
                 timeout=5)
        got = send(g, fleet, 300)
        for region, share in want.items():
            assert abs(got[region] - share) < 0.1, (step, got, want)
    # Recovery: the local targets come back, and the traffic with them.
    for victim in killed:
        group = next(group for group in fleet.values() if victim in group)
        group[group.index(victim)] = Upstream(port=victim.port).start()
    wait_for(lambda: shares_exported(g) == {"eu": 1.0, "us": 0.0, "ap": 0.0}, timeout=5)
    assert send(g, fleet, 100) == {"eu": 1.0, "us": 0.0, "ap": 0.0}
    lines = [json.loads(line) for line in g.stdout().splitlines() if '"request_id"' in line]
    assert {line["region"] for line in lines} >= {"eu", "us", "ap"}


def checked(tmp_path, text: str) -> tuple[int, str]:
    """`tollhouse check` of a config: (exit status, what it printed)."""
    import os
    import subprocess
    import sys

    from tests.support.processes import ROOT

    path = tmp_path / "g.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    return out.returncode, out.stderr + out.stdout


def test_a_locality_naming_no_target_of_a_region_is_a_config_error(tmp_path, fleet):
    status, said = checked(tmp_path, config(fleet).replace("failover: [us, ap]", "failover: [us, mars]"))
    assert status != 0 and "upstreams.app.locality.failover.1" in said


def test_the_gateways_zone_comes_first_and_spills_within_the_region(gateway_factory):
    """locality.zone: eu-a's targets take everything while enough of them are healthy, then
    the shortfall goes to eu-b before any other region sees a request."""
    zones = {"eu-a": [Upstream().start() for _ in range(2)], "eu-b": [Upstream().start() for _ in range(2)],
             "us": [Upstream().start()]}
    try:
        targets = ", ".join(f'{{url: "{u.url}", region: {"us" if zone == "us" else "eu"}, zone: {zone}}}'
                            for zone, group in zones.items() for u in group)
        g = gateway_factory(f"""
upstreams:
  app:
    targets: [{targets}]
    locality: {{local: eu, zone: eu-a, failover: [us], overprovisioning: 1.4}}
    health_check: {{path: /healthz, interval: 0.1s, timeout: 0.5s, healthy: 1, unhealthy: 1}}
    retries: {{attempts: 4, on: [connect_error, reset]}}
routes:
  - {{name: api, match: {{prefix: /}}, upstream: app}}
""")
        assert send(g, zones, 100) == {"eu-a": 1.0, "eu-b": 0.0, "us": 0.0}
        zones["eu-a"][0].stop()
        # eu-a's health: 1.4 × 1/2 = 70 %; eu-b takes the other 30 %; the region as a whole, all of it.
        wait_for(lambda: shares_exported(g) == {"eu": 1.0, "us": 0.0}, timeout=5)
        wait_for(lambda: abs(send(g, zones, 20)["eu-a"] - 0.7) < 0.3, timeout=5)   # the check has seen it down
        got = send(g, zones, 300)
        assert abs(got["eu-a"] - 0.7) < 0.1 and abs(got["eu-b"] - 0.3) < 0.1 and got["us"] == 0.0, got
        zones["eu-a"][1].stop()
        wait_for(lambda: send(g, zones, 20)["eu-a"] == 0.0, timeout=5)
        assert send(g, zones, 100) == {"eu-a": 0.0, "eu-b": 1.0, "us": 0.0}
    finally:
        for group in zones.values():
            for u in group:
                u.stop()


def test_a_zone_no_local_target_is_in_is_a_config_error(tmp_path, fleet):
    status, said = checked(tmp_path, config(fleet).replace("failover: [us, ap]", "zone: eu-z, failover: [us, ap]"))
    assert status != 0 and "upstreams.app.locality.zone" in said
