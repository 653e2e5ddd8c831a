"""The algorithms in memory, with a controlled clock."""
import pytest

from tollhouse.policies.ratelimit.algorithms import BUCKET, FIXED, SLIDING
from tollhouse.policies.ratelimit.limiter import MemoryLimiter, decide


class Clock:
    def __init__(self, now=1000.0):
        self.now = now


class Limit:
    def __init__(self, spec):
        self.algo, self.limit, self.window, self.burst = spec


class Harness:
    """The memory limiter at a controlled time."""

    def __init__(self, clock):
        self.clock = clock
        self.memory = MemoryLimiter()

    def check(self, specs, spec_ids, keys, divisor=1):
        tables = [self.memory.table(sid, spec) for sid, spec in zip(spec_ids, specs)]
        return decide([Limit(s) for s in specs], tables, keys, self.clock.now, divisor)


def limiter():
    clock = Clock()
    return Harness(clock), clock


def allowed(lim, specs, keys=None):
    keys = keys or ["k"] * len(specs)
    ok, decisions = lim.check(specs, [f"s{i}" for i in range(len(specs))], keys)
    return ok, decisions


def test_fixed_window_admits_limit_then_resets_at_the_window_edge():
    lim, clock = limiter()
    spec = (FIXED, 3, 10.0, 3)
    assert [allowed(lim, [spec])[0] for _ in range(5)] == [True, True, True, False, False]
    ok, d = allowed(lim, [spec])
    assert d[0][4] == pytest.approx(10.0) and d[0][2] == 0
    clock.now += 10
    assert allowed(lim, [spec])[0]


def test_sliding_window_weighs_the_previous_window():
    lim, clock = limiter()
    spec = (SLIDING, 10, 10.0, 10)
    for _ in range(10):
        assert allowed(lim, [spec])[0]
    assert not allowed(lim, [spec])[0]
    clock.now += 10 + 5          # half into the next window: estimate = 10 * 0.5 = 5
    results = [allowed(lim, [spec])[0] for _ in range(6)]
    assert results == [True] * 5 + [False]
    ok, d = allowed(lim, [spec])
    assert not ok and d[0][4] > 0


def test_token_bucket_bursts_then_refills_at_the_rate():
    lim, clock = limiter()
    spec = (BUCKET, 2, 1.0, 4)     # 2 per second, bursts of 4
    assert [allowed(lim, [spec])[0] for _ in range(5)] == [True] * 4 + [False]
    ok, d = allowed(lim, [spec])
    assert d[0][4] == pytest.approx(0.5)
    clock.now += 0.5
    assert allowed(lim, [spec])[0]
    assert not allowed(lim, [spec])[0]


def test_a_rejected_request_consumes_nothing_in_any_limit():
    lim, clock = limiter()
    wide = (FIXED, 100, 60.0, 100)
    narrow = (FIXED, 2, 1.0, 2)
    for _ in range(50):
        allowed(lim, [wide, narrow])
    ok, d = allowed(lim, [wide, narrow])
    assert not ok
    assert d[0][2] == 100 - 2 - 1   # only the two admitted requests counted in the wide limit
    clock.now += 1
    assert allowed(lim, [wide, narrow])[0]   # let back in as soon as the narrow window allows


def test_hammering_a_full_limit_is_let_back_in():
    lim, clock = limiter()
    spec = (SLIDING, 5, 1.0, 5)
    for _ in range(5):
        allowed(lim, [spec])
    for _ in range(1000):
        assert not allowed(lim, [spec])[0]
        clock.now += 0.001
    clock.now += 1.0
    assert allowed(lim, [spec])[0]


def test_keys_are_counted_apart_and_divisor_scales_limits():
    lim, clock = limiter()
    spec = (FIXED, 2, 10.0, 2)
    assert allowed(lim, [spec], ["a"])[0] and allowed(lim, [spec], ["a"])[0]
    assert not allowed(lim, [spec], ["a"])[0]
    assert allowed(lim, [spec], ["b"])[0]
    ok, _ = lim.check([(FIXED, 10, 10.0, 10)], ["local"], ["x"], divisor=5)
    ok2, _ = lim.check([(FIXED, 10, 10.0, 10)], ["local"], ["x"], divisor=5)
    ok3, _ = lim.check([(FIXED, 10, 10.0, 10)], ["local"], ["x"], divisor=5)
    assert (ok, ok2, ok3) == (True, True, False)


def test_idle_keys_are_forgotten_after_two_generations():
    lim, clock = limiter()
    spec = (FIXED, 1, 1.0, 1)          # a generation lasts 2 windows
    for i in range(1000):
        lim.check([spec], ["s"], [f"k{i}"])
    table = lim.memory.tables["s"]
    assert len(table.current) == 1000
    clock.now += 2.5
    lim.check([spec], ["s"], ["other"])
    assert len(table.old) == 1000 and len(table.current) == 1
    clock.now += 2.5
    lim.check([spec], ["s"], ["other"])
    assert not table.old.keys() - {"other"} and len(table.current) == 1
