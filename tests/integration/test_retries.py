"""Retries, their limits, and passive outlier ejection with real upstreams."""
import json
import time

from tests.integration.conftest import upstream_config
from tests.support.client import request
from tests.support.processes import free_port, refused_port
from tests.support.upstream import Upstream


def config(targets, upstream_extra):
    return upstream_config(targets, upstream_extra)


def call(port, method="GET", target="/x", body=b""):
    head = f"{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n" if body else \
        f"{method} {target} HTTP/1.1\r\nHost: a\r\n\r\n"
    return request(port, head.encode() + body, method)


def test_connect_errors_are_retried_on_another_target_for_any_method(gateway_factory):
    good = Upstream().start()
    try:
        dead = f"http://127.0.0.1:{refused_port()}"
        g = gateway_factory(config([dead, good.url], "    retries: {attempts: 2, on: [connect_error]}"))
        assert [call(g.port).status for _ in range(6)] == [200] * 6
        assert [call(g.port, "POST", "/upload", b"hello").status for _ in range(4)] == [200] * 4
        text = g.get_admin("/metrics")[1].decode()
        assert 'tollhouse_upstream_retries_total{upstream="app"}' in text
    finally:
        good.stop()


def test_status_retries_only_for_idempotent_requests(gateway_factory):
    sick, good = Upstream(fail_with=503).start(), Upstream().start()
    try:
        g = gateway_factory(config([sick.url, good.url], "    retries: {attempts: 2, on: [503]}"))
        assert [call(g.port).status for _ in range(6)] == [200] * 6
        posts = [call(g.port, "POST", "/upload", b"data").status for _ in range(6)]
        assert posts.count(503) == 3 and posts.count(200) == 3       # never repeated
    finally:
        sick.stop()
        good.stop()


def test_attempts_cap_and_each_try_uses_a_different_target(gateway_factory):
    sick = [Upstream(fail_with=503).start() for _ in range(3)]
    try:
        g = gateway_factory(config([u.url for u in sick], "    retries: {attempts: 3, on: [503]}"))
        assert call(g.port, target="/once").status == 503
        hits = [sum(1 for r in u.requests if r["target"] == "/once") for u in sick]
        assert hits == [1, 1, 1]
    finally:
        for u in sick:
            u.stop()


def test_no_retries_beyond_the_route_timeout(gateway_factory):
    sick = Upstream(fail_with=503).start()
    slow = Upstream().start()
    try:
        g = gateway_factory(config([slow.url, sick.url], "    retries: {attempts: 3, on: [503, timeout], per_try_timeout: 200ms}")
                            .replace("upstream: app\n", "upstream: app\n    timeout: 1s\n"))
        t0 = time.monotonic()
        r = call(g.port, target="/slow?ms=3000")
        assert r.status in (503, 504)
        assert time.monotonic() - t0 < 1.6
    finally:
        sick.stop()
        slow.stop()


def test_outlier_ejection_takes_a_failing_target_out_and_brings_it_back(gateway_factory):
    good = Upstream().start()
    port = free_port()
    try:
        g = gateway_factory(config([f"http://127.0.0.1:{port}", good.url],
                                   "    outlier: {consecutive_failures: 2, ejection: 1s, max_ejected: 50%}"))
        statuses = [call(g.port).status for _ in range(4)]
        assert statuses.count(502) == 2
        assert [call(g.port).status for _ in range(10)] == [200] * 10      # the dead target is out
        status = json.loads(g.get_admin("/status")[1])
        ejected = {t["url"]: t["ejected"] for t in status["upstreams"]["app"]["targets"]}
        assert ejected == {f"http://127.0.0.1:{port}": True, good.url: False}
        text = g.get_admin("/metrics")[1].decode()
        assert f'tollhouse_upstream_target_healthy{{target="http://127.0.0.1:{port}",upstream="app"}} 0.0' in text
        assert 'tollhouse_upstream_ejections_total{upstream="app"} 1.0' in text
        back = Upstream(port=port).start()
        try:
            time.sleep(1.2)
            ports = {json.loads(call(g.port).body)["port"] for _ in range(6)}
            assert ports == {port, good.port}
        finally:
            back.stop()
    finally:
        good.stop()


def test_max_ejected_keeps_targets_in_rotation(gateway_factory):
    ports = [free_port(), free_port()]
    g = gateway_factory(config([f"http://127.0.0.1:{p}" for p in ports],
                               "    outlier: {consecutive_failures: 1, ejection: 30s, max_ejected: 50%}"))
    for _ in range(6):
        call(g.port)
    status = json.loads(g.get_admin("/status")[1])
    assert sum(t["ejected"] for t in status["upstreams"]["app"]["targets"]) == 1


def test_the_retry_budget_caps_retries_under_load(gateway_factory):
    from tests.support.load import concurrent_statuses

    sick = [Upstream(fail_with=503, delay=0.3).start() for _ in range(3)]
    try:
        g = gateway_factory(config([u.url for u in sick], "    retries: {attempts: 3, on: [503], budget: 0%}"))
        statuses = concurrent_statuses([g.port], 30, b"GET /load HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert statuses == [503] * 30
        hits = sum(1 for u in sick for r in u.requests if r["target"] == "/load")
        # 30 first tries; with budget 0 % only the floor of 3 requests may retry (each up to twice).
        assert 30 < hits <= 36
    finally:
        for u in sick:
            u.stop()
