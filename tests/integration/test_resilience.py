"""Upstream processes that are paused (SIGSTOP), killed and brought back, behind the real gateway."""
import json
import time

from tests.integration.conftest import upstream_config
from tests.support.client import request
from tests.support.upstream import UpstreamProcess


def config(targets, extra=""):
    return upstream_config(targets, """    retries: {attempts: 2, on: [connect_error, timeout, reset, 502, 503, 504]}
    outlier: {consecutive_failures: 2, ejection: 1s, max_ejected: 50%}
""" + extra, route_extra="    timeout: 2s", connect_timeout="300ms", read_timeout="400ms")


def get(port):
    t0 = time.monotonic()
    r = request(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    return r, time.monotonic() - t0


def test_paused_upstream_is_retried_elsewhere_then_ejected_then_back(gateway_factory):
    a, b = UpstreamProcess().start(), UpstreamProcess().start()
    try:
        g = gateway_factory(config([a.url, b.url]))
        assert all(get(g.port)[0].status == 200 for _ in range(4))
        b.pause()
        results = [get(g.port) for _ in range(8)]
        assert all(r.status == 200 for r, _ in results)            # timeouts retried on the live target
        assert all(json.loads(r.body)["port"] == a.port for r, _ in results)
        fast = [d for _, d in results[-4:]]
        assert max(fast) < 0.3                                     # b is ejected: no more waiting on it
        b.resume()
        time.sleep(1.2)
        ports = {json.loads(get(g.port)[0].body)["port"] for _ in range(8)}
        assert ports == {a.port, b.port}
    finally:
        a.kill()
        b.resume()
        b.kill()


def test_killed_and_restarted_upstream(gateway_factory):
    a, b = UpstreamProcess().start(), UpstreamProcess().start()
    try:
        g = gateway_factory(config([a.url, b.url]))
        assert all(get(g.port)[0].status == 200 for _ in range(4))
        b.kill()                                                   # pooled connections to b die too
        assert all(get(g.port)[0].status == 200 for _ in range(8))
        b = UpstreamProcess(port=b.port).start()
        time.sleep(1.2)
        ports = {json.loads(get(g.port)[0].body)["port"] for _ in range(8)}
        assert ports == {a.port, b.port}
    finally:
        a.kill()
        b.kill()


def test_the_first_request_after_start_gets_its_whole_timeout(gateway_factory, upstream):
    """Deadlines are counted on the worker's coarse clock. Before its first tick the
    clock still said when it was imported, before the config loaded (~0.1 s on
    this machine), and a request served that early timed out that much early."""
    g = gateway_factory(upstream_config([upstream.url], route_extra="    timeout: 300ms"))
    r = request(g.port, b"GET /slow?ms=200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (r.status, r.body) == (200, b"slow")
