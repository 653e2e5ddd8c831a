"""Balancers and the circuit breaker through the real gateway and real upstreams."""
import json
import time

from tests.integration.conftest import upstream_config
from tests.support.client import request
from tests.support.processes import free_port
from tests.support.upstream import Upstream


def config(targets, upstream_extra=""):
    return upstream_config(targets, upstream_extra)


def get(port, target, headers=""):
    return request(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())


def test_consistent_hash_keeps_a_key_on_one_target(gateway_factory):
    a, b, c = Upstream().start(), Upstream().start(), Upstream().start()
    try:
        g = gateway_factory(config([a.url, b.url, c.url], "    balancer: consistent_hash\n    hash_key: header:X-User"))
        for user in ("ann", "ben", "cat", "dan"):
            ports = {json.loads(get(g.port, "/x", f"X-User: {user}\r\n").body)["port"] for _ in range(5)}
            assert len(ports) == 1
        spread = {json.loads(get(g.port, "/x", f"X-User: user{i}\r\n").body)["port"] for i in range(60)}
        assert len(spread) == 3
    finally:
        for u in (a, b, c):
            u.stop()


def test_least_connections_sends_new_work_to_the_idle_target(gateway_factory):
    import threading
    a, b = Upstream().start(), Upstream().start()
    try:
        g = gateway_factory(config([a.url, b.url], "    balancer: least_connections"))
        slow = [threading.Thread(target=get, args=(g.port, "/slow?ms=700")) for _ in range(2)]
        for t in slow:
            t.start()
        time.sleep(0.2)     # one slow request on each target (ties alternate)
        third = threading.Thread(target=get, args=(g.port, "/slow?ms=700"))
        third.start()
        time.sleep(0.2)
        busy = {a.port: sum(1 for r in a.requests if r["target"].startswith("/slow")),
                b.port: sum(1 for r in b.requests if r["target"].startswith("/slow"))}
        assert sorted(busy.values()) == [1, 2]
        # The next fast request goes to the target with one in flight.
        port = json.loads(get(g.port, "/fast").body)["port"]
        assert busy[port] == 1
        for t in [*slow, third]:
            t.join()
    finally:
        a.stop()
        b.stop()


def test_circuit_opens_on_failures_answers_at_once_and_recovers(gateway_factory):
    port = free_port()
    g = gateway_factory(config([f"http://127.0.0.1:{port}"], """    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_requests: 2}"""))  # noqa: E501 - a config line as a user writes it
    statuses = [get(g.port, "/x").status for _ in range(4)]          # refused: 502 x4, trips the breaker
    assert statuses == [502] * 4
    r = get(g.port, "/x")
    assert r.status == 503 and r.getheader("retry-after") == "1"
    status = json.loads(g.get_admin("/status")[1])
    assert status["upstreams"]["app"]["circuit"] == "open"
    assert 'tollhouse_circuit_state{upstream="app"} 1.0' in g.get_admin("/metrics")[1].decode()
    u = Upstream(port=port).start()                                    # the upstream comes back
    try:
        time.sleep(1.1)
        assert [get(g.port, "/x").status for _ in range(3)] == [200, 200, 200]   # probes pass, circuit closes
        assert json.loads(g.get_admin("/status")[1])["upstreams"]["app"]["circuit"] == "closed"
    finally:
        u.stop()


def test_5xx_answers_count_as_failures(gateway_factory, upstream):
    g = gateway_factory(config([upstream.url], """    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 30s, half_open_requests: 1}"""))  # noqa: E501 - a config line as a user writes it
    assert [get(g.port, "/status/500").status for _ in range(4)] == [500] * 4
    assert get(g.port, "/status/200").status == 503


def test_circuit_state_is_shared_through_redis(gateway_factory):
    from tests.support.processes import RedisServer
    redis = RedisServer().start()
    try:
        port = free_port()
        cfg = config([f"http://127.0.0.1:{port}"], """    circuit_breaker: {failure_ratio: 0.5, min_requests: 3, window: 10s, open_for: 3s, half_open_requests: 1}""")  # noqa: E501 - a config line as a user writes it
        cfg = f"store: {redis.url}\n" + cfg
        a, b = gateway_factory(cfg), gateway_factory(cfg)
        assert [get(a.port, "/x").status for _ in range(3)] == [502] * 3   # a's circuit opens
        assert get(a.port, "/x").status == 503
        time.sleep(1.0)                                                     # b polls the shared state
        r = get(b.port, "/x")
        assert r.status == 503 and int(r.getheader("retry-after")) <= 3     # b never tried the upstream
        assert json.loads(b.get_admin("/status")[1])["upstreams"]["app"]["circuit"] == "open"
    finally:
        redis.cleanup()


def test_circuit_state_is_reported_for_every_upstream_with_a_redis_store(gateway_factory, upstream):
    from tests.support.processes import RedisServer

    redis = RedisServer().start()
    try:
        g = gateway_factory(f"""store: {redis.url}
upstreams:
  first: {{targets: ["{upstream.url}"], circuit_breaker: {{min_requests: 4}}}}
  second: {{targets: ["{upstream.url}"], circuit_breaker: {{min_requests: 4}}}}
routes:
  - {{match: {{prefix: /a}}, upstream: first}}
  - {{match: {{prefix: /}}, upstream: second}}
""")
        text = g.get_admin("/metrics")[1].decode()
        assert 'tollhouse_circuit_state{upstream="first"} 0.0' in text
        assert 'tollhouse_circuit_state{upstream="second"} 0.0' in text
    finally:
        redis.cleanup()
