"""Targets from DNS (docs/upstreams.md, "Targets from DNS"): a real DNS server (dnspython,
tests/support/dns_server.py) answers for real upstreams on loopback addresses; a changed
answer changes the targets without a reload, a removed target under load costs no
request, SRV weights steer the traffic, and a failed lookup keeps the last good answer."""
import re
import threading

import pytest

from tests.support.client import request
from tests.support.dns_server import DnsServer
from tests.support.processes import free_port, wait_for
from tests.support.upstream import Upstream

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def dns_server():
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def upstreams():
    port = free_port()
    ups = {address: Upstream(port=port, host=address).start() for address in ADDRESSES}
    yield port, ups
    for u in ups.values():
        u.stop()


def gateway(gateway_factory, dns_server, target: str):
    return gateway_factory(f"""
upstreams:
  app:
    targets: [{target}]
    dns_resolver: "{dns_server.address}"
    dns_refresh: 5s
routes:
  - {{name: api, match: {{prefix: /}}, upstream: app}}
""")


def served(ups) -> dict:
    return {address: len(u.requests) for address, u in ups.items()}


def spread(g, ups, n: int) -> dict:
    before = served(ups)
    for _ in range(n):
        assert request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200
    after = served(ups)
    return {a: after[a] - before[a] for a in ups}


def test_a_changed_answer_changes_the_targets_without_a_reload(gateway_factory, dns_server, upstreams):
    port, ups = upstreams
    dns_server.records["orders.test."] = {"A": ["127.0.0.2", "127.0.0.3"]}
    g = gateway(gateway_factory, dns_server, f"{{dns: 'orders.test:{port}'}}")
    wait_for(lambda: request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200, timeout=10)
    counts = spread(g, ups, 40)
    assert counts["127.0.0.2"] > 0 and counts["127.0.0.3"] > 0 and counts["127.0.0.4"] == 0
    dns_server.records["orders.test."] = {"A": ["127.0.0.3", "127.0.0.4"]}
    wait_for(lambda: spread(g, ups, 10)["127.0.0.2"] == 0, timeout=10)   # one TTL (1 s) later
    counts = spread(g, ups, 40)
    assert counts["127.0.0.2"] == 0 and counts["127.0.0.3"] > 0 and counts["127.0.0.4"] > 0


def test_a_target_removed_under_load_costs_no_request(gateway_factory, dns_server, upstreams):
    port, ups = upstreams
    dns_server.records["orders.test."] = {"A": list(ADDRESSES)}
    g = gateway(gateway_factory, dns_server, f"{{dns: 'orders.test:{port}'}}")
    wait_for(lambda: request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200, timeout=10)
    statuses: list[int] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            statuses.append(request(g.port, b"GET /slow?ms=20 HTTP/1.1\r\nHost: a\r\n\r\n").status)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(statuses) > 20)
        dns_server.records["orders.test."] = {"A": ["127.0.0.2", "127.0.0.3"]}
        wait_for(lambda: spread(g, ups, 5)["127.0.0.4"] == 0, timeout=10)
        taken = len(ups["127.0.0.4"].requests)
        wait_for(lambda: len(statuses) > 200, timeout=30)
        assert len(ups["127.0.0.4"].requests) == taken   # it takes nothing new
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert statuses and set(statuses) == {200}


def test_srv_weights_steer_the_traffic(gateway_factory, dns_server, upstreams):
    port, ups = upstreams
    dns_server.records["a.orders.test."] = {"A": ["127.0.0.2"]}
    dns_server.records["b.orders.test."] = {"A": ["127.0.0.3"]}
    dns_server.records["c.orders.test."] = {"A": ["127.0.0.4"]}
    dns_server.records["_http._tcp.orders.test."] = {"SRV": [(10, 1, port, "a.orders.test."), (10, 3, port, "b.orders.test."),
                                                             (20, 5, port, "c.orders.test.")]}   # c: a backup priority
    g = gateway(gateway_factory, dns_server, "{srv: _http._tcp.orders.test}")
    wait_for(lambda: request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200, timeout=10)
    counts = spread(g, ups, 80)
    assert counts == {"127.0.0.2": 20, "127.0.0.3": 60, "127.0.0.4": 0}   # smooth weighted round robin: exact
    dns_server.records["_http._tcp.orders.test."] = {"SRV": [(10, 3, port, "a.orders.test."),
                                                             (10, 1, port, "b.orders.test.")]}
    wait_for(lambda: spread(g, ups, 8) == {"127.0.0.2": 6, "127.0.0.3": 2, "127.0.0.4": 0}, timeout=10)


def test_a_failed_lookup_keeps_the_last_good_answer_and_is_counted(gateway_factory, dns_server, upstreams):
    port, ups = upstreams
    dns_server.records["orders.test."] = {"A": ["127.0.0.2"]}
    g = gateway(gateway_factory, dns_server, f"{{dns: 'orders.test:{port}'}}")
    wait_for(lambda: request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200, timeout=10)
    dns_server.fail = True

    def failures() -> float:
        found = re.search(r'tollhouse_dns_failures_total\{upstream="app"\} ([\d.]+)', g.get_admin("/metrics")[1].decode())
        return float(found.group(1)) if found else 0.0

    wait_for(lambda: failures() >= 1, timeout=10)
    assert spread(g, ups, 10) == {"127.0.0.2": 10, "127.0.0.3": 0, "127.0.0.4": 0}
    dns_server.fail = False
    dns_server.records["orders.test."] = {"A": ["127.0.0.3"]}
    wait_for(lambda: spread(g, ups, 4)["127.0.0.3"] == 4, timeout=10)


def test_targets_from_dns_take_their_entrys_region(gateway_factory, dns_server, upstreams):
    """With `locality`, a discovered target goes in the level of its entry's region (and
    zone), and a changed answer rebuilds the levels. No target is known before the first
    answer: the levels start empty."""
    port, ups = upstreams
    dns_server.records["eu.test."] = {"A": ["127.0.0.2"]}
    dns_server.records["us.test."] = {"A": ["127.0.0.3"]}
    g = gateway_factory(f"""
upstreams:
  app:
    targets: [{{dns: 'eu.test:{port}', region: eu, zone: eu-a}}, {{dns: 'us.test:{port}', region: us}}]
    locality: {{local: eu, zone: eu-a, failover: [us]}}
    dns_resolver: "{dns_server.address}"
    dns_refresh: 5s
routes:
  - {{name: api, match: {{prefix: /}}, upstream: app}}
""")
    wait_for(lambda: request(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200, timeout=10)
    assert spread(g, ups, 30) == {"127.0.0.2": 30, "127.0.0.3": 0, "127.0.0.4": 0}   # eu only
    dns_server.records["eu.test."] = {"A": ["127.0.0.4"]}
    wait_for(lambda: spread(g, ups, 10)["127.0.0.4"] == 10, timeout=10)
    assert spread(g, ups, 30) == {"127.0.0.2": 0, "127.0.0.3": 0, "127.0.0.4": 30}
