"""Traffic splitting through the real gateway, between real upstreams (docs/releases.md)."""
import json
from collections import Counter

import pytest

from tests.support.client import RawClient, request
from tests.support.processes import refused_port, wait_for
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def sides():
    blue, green = Upstream().start(), Upstream().start()
    yield blue, green
    blue.stop()
    green.stop()


def config(blue, green, route: str, green_url: str | None = None, green_extra: str = "") -> str:
    return f"""
upstreams:
  blue: {{targets: ["{blue.url}"]}}
  green:
    targets: ["{green_url or green.url}"]
{green_extra}
routes:
{route}
"""


def side_of(r, blue) -> str:
    assert r.status == 200, (r.status, r.body)
    return "blue" if json.loads(r.body)["port"] == blue.port else "green"


def get(g, target="/shop/x", headers=""):
    return request(g.port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())


def test_requests_are_shared_by_weight_and_counted_per_side(gateway_factory, sides):
    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 80}, {upstream: green, weight: 20}]
"""))
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_split_requests_total{route="shop",upstream="green"} 0.0' in text
    c = RawClient(g.port)
    seen = Counter()
    try:
        for _ in range(400):
            c.send(b"GET /shop/x HTTP/1.1\r\nHost: a\r\n\r\n")
            seen[side_of(c.response(), blue)] += 1
    finally:
        c.close()
    # 400 draws at p = 0.2: mean 80, sd 8; six sd either way.
    assert 32 <= seen["green"] <= 128, seen
    text = g.get_admin("/metrics")[1].decode()
    assert f'tollhouse_split_requests_total{{route="shop",upstream="green"}} {float(seen["green"])}' in text
    assert f'tollhouse_split_requests_total{{route="shop",upstream="blue"}} {float(seen["blue"])}' in text


def test_a_forced_request_goes_to_its_side_whatever_the_weights(gateway_factory, sides):
    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split:
      - {upstream: blue, weight: 100}
      - {upstream: green, weight: 0, force: {header: X-Canary, value: "1"}}
"""))
    assert {side_of(get(g, headers="X-Canary: 1\r\n"), blue) for _ in range(20)} == {"green"}
    assert {side_of(get(g, headers="X-Canary: 0\r\n"), blue) for _ in range(20)} == {"blue"}


def test_a_sticky_caller_stays_on_one_side(gateway_factory, sides):
    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 50}, {upstream: green, weight: 50}]
    sticky: ip
"""))
    assert len({side_of(get(g), blue) for _ in range(30)}) == 1


def test_the_sticky_cookie_is_set_and_then_followed(gateway_factory, sides):
    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 50}, {upstream: green, weight: 50}]
    sticky: cookie
"""))
    first = get(g)
    cookie = first.getheader("set-cookie")
    assert cookie is not None and cookie.startswith("tollhouse-split-shop="), first.headers
    name_value = cookie.split(";")[0]
    side = side_of(first, blue)
    assert name_value.split("=")[1] == side
    for _ in range(20):
        r = get(g, headers=f"Cookie: a=b; {name_value}\r\n")
        assert side_of(r, blue) == side and r.getheader("set-cookie") is None
    other = "green" if side == "blue" else "blue"
    moved = get(g, headers=f"Cookie: tollhouse-split-shop={other}\r\n")
    assert side_of(moved, blue) == other   # the cookie decides while its side has weight


def test_a_side_with_no_healthy_target_gets_no_traffic(gateway_factory, sides):
    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 50}, {upstream: green, weight: 50}]
""", green_url=f"http://127.0.0.1:{refused_port()}",
        green_extra="    health_check: {path: /healthz, interval: 100ms, timeout: 200ms, healthy: 1, unhealthy: 1}"))
    wait_for(lambda: '"healthy": false' in g.get_admin("/status")[1].decode().replace('":false', '": false'),
             timeout=5)
    assert [get(g).status for _ in range(30)] == [200] * 30
