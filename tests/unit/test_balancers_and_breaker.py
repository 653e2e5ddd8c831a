import random

from tollhouse.upstream.balancer import ConsistentHash, LeastConnections, TwoRandomChoices
from tollhouse.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class T:
    def __init__(self, url, weight=1, in_flight=0):
        self.url, self.weight, self.in_flight = url, weight, in_flight


class Ex:
    def __init__(self, ip):
        self.client_ip = ip
        self.consumer = None


def test_least_connections_prefers_the_least_loaded():
    a, b, c = T("a", in_flight=5), T("b", in_flight=1), T("c", weight=4, in_flight=2)
    assert LeastConnections([a, b, c]).pick() is c        # 2/4 < 1/1 < 5/1
    a.in_flight = b.in_flight = c.in_flight = 0
    lc = LeastConnections([a, b])
    assert {lc.pick().url for _ in range(4)} == {"a", "b"}   # idle targets share


def test_two_random_choices_avoids_the_busy_target():
    busy, idle = T("busy", in_flight=100), T("idle")
    p2c = TwoRandomChoices([busy, idle], rand=random.Random(7))
    picks = [p2c.pick().url for _ in range(200)]
    assert picks.count("idle") == 200        # with two targets both are always compared


def test_consistent_hash_is_stable_and_moves_about_one_nth():
    targets = [T(f"http://10.0.0.{i}:80") for i in range(5)]
    ring = ConsistentHash(targets, "ip")
    ips = [f"192.168.{i // 256}.{i % 256}" for i in range(4000)]
    before = {ip: ring.pick(Ex(ip)).url for ip in ips}
    assert before == {ip: ring.pick(Ex(ip)).url for ip in ips}
    smaller = ConsistentHash(targets[:4], "ip")
    moved = sum(1 for ip in ips if smaller.pick(Ex(ip)).url != before[ip])
    gone = sum(1 for ip in ips if before[ip] == targets[4].url)
    assert moved == gone                      # only the leaving target's keys move
    assert 0.1 < gone / len(ips) < 0.3        # ~1/5 of them
    counts = [list(before.values()).count(t.url) for t in targets]
    assert min(counts) > 0.5 * len(ips) / 5   # spread fairly


class Settings:
    failure_ratio = 0.5
    min_requests = 4
    window = 10.0
    open_for = 5.0
    half_open_requests = 2


class Clock:
    now = 1000.0


def test_breaker_trips_answers_at_once_probes_and_recovers():
    clock = Clock()
    changes = []
    b = CircuitBreaker(Settings(), clock, changes.append)
    for ok in (True, False, True):
        assert b.allow()
        b.record(ok)
    assert b.state == CLOSED                 # 3 requests: below min_requests
    b.record(False)                          # 4 requests, 2 failed: 50 %
    assert b.state == OPEN and not b.allow() and b.retry_after() == 5
    clock.now += 5
    assert b.allow() and b.state == HALF_OPEN
    assert b.allow() and not b.allow()       # two probes only
    b.record(True)
    b.record(False)                          # a failing probe reopens
    assert b.state == OPEN
    clock.now += 5
    assert b.allow() and b.allow()
    b.record(True)
    b.record(True)
    assert b.state == CLOSED and b.allow()
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_breaker_forgets_outcomes_older_than_the_window():
    clock = Clock()
    b = CircuitBreaker(Settings(), clock)
    for _ in range(3):
        b.record(False)
    clock.now += 11
    b.record(False)
    assert b.state == CLOSED                 # only 1 request in the window
