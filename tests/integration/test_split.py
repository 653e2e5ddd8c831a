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


SPLIT_ROUTE = """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 100}, {upstream: green, weight: 0}]
"""


def admin(g, method: str, body: bytes | None = None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{g.admin_port}/routes/shop/split", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _keep_requesting(g, record, stop, pause: float = 0.0) -> None:
    """One keep-alive client asking /shop/x until `stop` is set; `record(response)` for each answer."""
    import time

    c = RawClient(g.port)
    try:
        while not stop.is_set():
            c.send(b"GET /shop/x HTTP/1.1\r\nHost: a\r\n\r\n")
            record(c.response())
            time.sleep(pause)
    finally:
        c.close()


def test_weights_change_live_and_a_flip_loses_no_request(gateway_factory, sides):
    """Blue-green: 100/0 to 0/100 through the admin API while a client keeps requesting
    on keep-alive connections: every request answered, none lost, none refused."""
    import threading

    blue, green = sides
    g = gateway_factory(config(blue, green, SPLIT_ROUTE))
    status, shown = admin(g, "GET")
    assert status == 200 and shown["source"] == "file"
    assert shown["sides"] == [{"upstream": "blue", "weight": 100}, {"upstream": "green", "weight": 0}]
    results, stop = [], threading.Event()
    threads = [threading.Thread(target=_keep_requesting, args=(g, lambda r: results.append(side_of(r, blue)), stop))
               for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) > 100, timeout=30)
    status, shown = admin(g, "PUT", b'{"weights": {"blue": 0, "green": 100}}')
    assert status == 200 and shown["source"] == "operator"
    flipped_at = len(results)
    wait_for(lambda: len(results) > flipped_at + 200, timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert set(results[:100]) == {"blue"}
    assert set(results[flipped_at + 8:]) == {"green"}   # a request in flight at the flip may still end on blue
    status, shown = admin(g, "GET")
    assert [s["weight"] for s in shown["sides"]] == [0, 100] and shown["set_at"] > 0


@pytest.mark.parametrize("body, message", [
    (b'{"weights": {"blue": "lots"}}', "weights.blue: expected a whole number"),
    (b'{"weights": {"blue": 1.5}}', "weights.blue: expected a whole number"),
    (b'{"weights": {"teal": 5}}', "weights.teal: not a side of this route"),
    (b'{"weights": {"blue": 0, "green": 0}}', "weights: no side would have weight"),
    (b'{"weights": [0, 100]}', "weights: expected"),
    (b'not json', "the body is not JSON"),
])
def test_a_bad_put_is_400_naming_the_field_and_changes_nothing(gateway_factory, sides, body, message):
    blue, green = sides
    g = gateway_factory(config(blue, green, SPLIT_ROUTE))
    before = admin(g, "GET")[1]
    status, answer = admin(g, "PUT", body)
    assert status == 400 and answer["error"].startswith(message), answer
    assert admin(g, "GET")[1] == before
    assert {side_of(get(g), blue) for _ in range(10)} == {"blue"}


def test_a_reload_keeps_live_weights_unless_the_files_split_changed(gateway_factory, sides):
    import signal

    blue, green = sides
    g = gateway_factory(config(blue, green, SPLIT_ROUTE))
    assert admin(g, "PUT", b'{"weights": {"blue": 0, "green": 100}}')[0] == 200
    g.write_config(config(blue, green, SPLIT_ROUTE + "  - {name: other, match: {prefix: /other}, upstream: blue}\n"))
    g.signal(signal.SIGHUP)
    wait_for(lambda: get(g, "/other/x").status == 200, timeout=5)
    assert admin(g, "GET")[1]["source"] == "operator"
    assert {side_of(get(g), blue) for _ in range(10)} == {"green"}
    g.write_config(config(blue, green, SPLIT_ROUTE.replace("weight: 100}, {upstream: green, weight: 0}",
                                                           "weight: 90}, {upstream: green, weight: 10}")))
    g.signal(signal.SIGHUP)
    wait_for(lambda: admin(g, "GET")[1]["source"] == "file", timeout=5)
    assert [s["weight"] for s in admin(g, "GET")[1]["sides"]] == [90, 10]


def test_with_redis_every_instance_follows_a_flip_within_a_second(gateway_factory, sides, redis):
    import time

    blue, green = sides
    cfg = f"store: {redis.url}\n" + config(blue, green, SPLIT_ROUTE)
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    assert {side_of(get(b), blue) for _ in range(5)} == {"blue"}
    assert admin(a, "PUT", b'{"weights": {"blue": 0, "green": 100}}')[0] == 200
    told = time.monotonic()
    wait_for(lambda: admin(b, "GET")[1]["source"] == "operator", timeout=3)
    assert time.monotonic() - told < 1.0
    assert {side_of(get(b), blue) for _ in range(10)} == {"green"}


def test_the_curl_lines_of_docs_releases_work(gateway_factory):
    """The commands docs/releases.md shows, run as written (the admin port substituted)."""
    import os
    import re
    import subprocess

    from tests.support.processes import ROOT

    blue, green = Upstream().start(), Upstream().start()
    try:
        g = gateway_factory(f"""
admin: {{listen: '127.0.0.1:{{admin_port}}', token: docs-token}}
upstreams:
  checkout-blue: {{targets: ["{blue.url}"]}}
  checkout-green: {{targets: ["{green.url}"]}}
routes:
  - name: checkout
    match: {{prefix: /checkout}}
    split: [{{upstream: checkout-blue, weight: 90}}, {{upstream: checkout-green, weight: 10}}]
""")
        text = open(os.path.join(ROOT, "docs", "releases.md"), encoding="utf-8").read()
        block = re.search(r"## Live weights.*?```sh\n(.*?)```", text, re.S).group(1)
        commands = [c for c in re.sub(r"\\\n\s*", "", block).splitlines() if c.startswith("curl")]
        assert len(commands) == 2
        env = {**os.environ, "ADMIN_TOKEN": "docs-token"}
        outputs = [subprocess.run(c.split("#")[0].replace("9901", str(g.admin_port)), shell=True, env=env,
                                  capture_output=True, text=True, timeout=10).stdout for c in commands]
        shown, flipped = (json.loads(o) for o in outputs)
        assert shown["route"] == "checkout" and shown["source"] == "file"
        assert [s["weight"] for s in flipped["sides"]] == [0, 100] and flipped["source"] == "operator"
        assert {side_of(get(g, "/checkout/x"), blue) for _ in range(10)} == {"green"}
    finally:
        blue.stop()
        green.stop()


def test_a_failing_canary_is_rolled_back_within_the_window_and_a_second(gateway_factory, sides):
    import threading
    import time

    blue, _ = sides
    canary = Upstream(fail_with=500).start()
    try:
        g = gateway_factory(config(blue, canary, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 50}, {upstream: green, weight: 50}]
    rollback: {error_ratio: 20%, min_requests: 20, window: 2s, to: blue}
"""))
        text = g.get_admin("/metrics")[1].decode()
        assert 'tollhouse_split_rollbacks_total{route="shop",upstream="green"} 0.0' in text
        statuses, stop = [], threading.Event()
        t = threading.Thread(target=_keep_requesting, args=(g, lambda r: statuses.append(r.status), stop, 0.005))
        started = time.monotonic()
        t.start()
        try:
            wait_for(lambda: admin(g, "GET")[1]["source"] == "rollback", timeout=10)
            took = time.monotonic() - started
            assert took < 2 + 1 + 1, took   # the window, the judging second, and this test's polling
            shown = admin(g, "GET")[1]
            assert [s["weight"] for s in shown["sides"]] == [50, 0]
            after = len(statuses)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(timeout=10)
        assert set(statuses[after + 2:]) == {200}   # the canary gets nothing once rolled back
        text = g.get_admin("/metrics")[1].decode()
        assert 'tollhouse_split_rollbacks_total{route="shop",upstream="green"} 1.0' in text
        assert "rolled back to blue" in g.stderr()
    finally:
        canary.stop()


def test_the_access_log_names_the_side_that_served(gateway_factory, sides):
    import time

    blue, green = sides
    g = gateway_factory(config(blue, green, """  - name: shop
    match: {prefix: /shop}
    split: [{upstream: blue, weight: 0}, {upstream: green, weight: 1}]
"""))
    assert get(g, "/shop/x", "X-Request-ID: side-1\r\n").status == 200
    deadline = time.time() + 3
    lines = []
    while not lines and time.time() < deadline:
        time.sleep(0.05)
        lines = [json.loads(line) for line in g.stdout().splitlines() if "side-1" in line]
    assert lines and lines[-1]["split"] == "green" and lines[-1]["route"] == "shop"
