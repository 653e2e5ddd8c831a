"""Active health checks: a target that fails its checks leaves rotation and comes back."""
import json
import time

from tests.integration.conftest import upstream_config
from tests.support.client import request
from tests.support.processes import wait_for
from tests.support.upstream import Upstream


def config(targets):
    return upstream_config(targets, "    health_check: {path: /healthz, interval: 100ms, timeout: 200ms, healthy: 2, unhealthy: 2}")  # noqa: E501 - a config line as a user writes it


def get(port):
    return request(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")


def targets_health(g):
    status = json.loads(g.get_admin("/status")[1])
    return {t["url"]: t["healthy"] for t in status["upstreams"]["app"]["targets"]}


def _run(gateway_factory, workers):
    good, flaky = Upstream().start(), Upstream(fail_with=500).start()
    try:
        g = gateway_factory(config([good.url, flaky.url]), workers=workers)
        wait_for(lambda: targets_health(g)[flaky.url] is False, timeout=5)
        assert {json.loads(get(g.port).body)["port"] for _ in range(10)} == {good.port}
        text = g.get_admin("/metrics")[1].decode()
        assert f'tollhouse_upstream_target_healthy{{target="{flaky.url}",upstream="app"}} 0.0' in text
        checks_before = sum(1 for r in flaky.requests if r["target"] == "/healthz")
        time.sleep(1.0)
        checks = sum(1 for r in flaky.requests if r["target"] == "/healthz") - checks_before
        assert 5 <= checks <= 13          # ~10 per second for the whole gateway, not per worker
        flaky.fail_with = None            # it recovers
        wait_for(lambda: targets_health(g)[flaky.url] is True, timeout=5)
        assert {json.loads(get(g.port).body)["port"] for _ in range(10)} == {good.port, flaky.port}
    finally:
        good.stop()
        flaky.stop()


def test_health_checks_single_process(gateway_factory):
    _run(gateway_factory, None)


def test_health_checks_once_for_all_workers(gateway_factory):
    _run(gateway_factory, 2)


def test_no_healthy_target_is_503(gateway_factory):
    sick = Upstream(fail_with=500).start()
    try:
        g = gateway_factory(config([sick.url]))
        wait_for(lambda: targets_health(g)[sick.url] is False, timeout=5)
        r = get(g.port)
        assert r.status == 503 and r.getheader("retry-after") == "1"
    finally:
        sick.stop()
