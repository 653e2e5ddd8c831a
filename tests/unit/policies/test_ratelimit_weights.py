"""Weighted requests (`cost:` on a limit): a request takes its cost from the limit, in
memory (algorithms.py) and in Redis (ratelimit.lua, against a real redis-server), alike."""
import time

import pytest
import redis as redis_py

from tollhouse.policies.ratelimit.algorithms import BUCKET, FIXED, SLIDING
from tollhouse.policies.ratelimit.limiter import LUA, MemoryLimiter, decide

COSTS = [3, 4, 2, 2, 5, 1]
# With a limit of 10 (and a bucket of 10): 3, 7, 9 pass; 11 and 14 would pass it; 10 passes.
EXPECTED = [True, True, True, False, False, True]


class Limit:
    def __init__(self, algo):
        self.algo, self.limit, self.window, self.burst = algo, 10, 1000.0, 10


@pytest.mark.parametrize("algo", [FIXED, SLIDING, BUCKET])
def test_in_memory(algo):
    memory = MemoryLimiter()
    lim = Limit(algo)
    table = memory.table("s", (algo, 10, 1000.0, 10))
    seen = [decide([lim], [table], ["k"], 5000.0, 1, (cost,)) for cost in COSTS]
    assert [ok for ok, _ in seen] == EXPECTED
    # A refused request says what is left: 1 after 9 was taken, then 0 after 10.
    assert [d[0][2] for _, d in seen] == [7, 3, 1, 1, 1, 0]
    ok, decisions = decide([lim], [table], ["k"], 5000.0, 1, None)   # 10 of 10 taken: not even 1 more
    assert ok is False and decisions[0][2] == 0


@pytest.mark.parametrize("algo", [FIXED, SLIDING, BUCKET])
def test_in_redis(redis, algo):
    store = redis_py.Redis(port=redis.port)
    # Windows are numbered from the epoch: one that began 5 s ago is not straddled here.
    window_ms = int(time.time() * 1000) - 5000
    seen = [store.eval(LUA, 1, "k", 1, 1, algo, 10, window_ms, 10, cost, 1, 1, 1) for cost in COSTS]
    assert [bool(out[0]) for out in seen] == EXPECTED
    assert [out[2] for out in seen] == [7, 3, 1, 1, 1, 0]
    out = store.eval(LUA, 1, "k", 1, 1, algo, 10, window_ms, 10, 1, 1, 1, 1)
    assert out[0] == 0 and out[2] == 0   # 10 of 10 taken: rejected, 0 remaining
