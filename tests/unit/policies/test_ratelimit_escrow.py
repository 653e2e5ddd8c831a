"""Escrow global limits (policies/ratelimit: ratelimit.lua's +30 limits, regions.py's LEND and
APPLY) run against real redis-servers, one per region: shares, loans, and the cap."""
import random
import time

import pytest
import redis as redis_py

from tests.support.processes import RedisServer
from tollhouse.policies.ratelimit.limiter import LUA
from tollhouse.policies.ratelimit.regions import _APPLY, _LEND, _TAKE_ESCROW

# Windows are numbered from the epoch: one that began 5 s before these tests is one that no
# test straddles, and in which every test is early (before a tenth of it has passed).
WINDOW_MS = int(time.time() * 1000) - 5000
KEY = "th:rl:v1:{global}:global:fixed_window:30:long:30:global"


@pytest.fixture
def stores():
    servers = [RedisServer().start() for _ in range(3)]
    yield [redis_py.Redis(port=s.port) for s in servers]
    for s in servers:
        s.cleanup()


def ask(store, share: int, count: int = 1, limit: int = 30, cost: int = 1) -> list[int]:
    """`count` requests (of `cost` each) for the escrow key in one script call: each one's allowed flag."""
    out = store.eval(LUA, 1, KEY, 1, 1, 30 + 0, limit, WINDOW_MS, share, cost, 1, 1, count)
    return [out[i * 5] for i in range(count)]


def index(store) -> int:
    s, us = store.time()
    return (s * 1000 + us // 1000) // WINDOW_MS


def lend(lender, borrower: str, asked: int, share: int, headroom: int = 120):
    return lender.eval(_LEND, 1, KEY, borrower, index(lender), asked, share, WINDOW_MS, headroom)


def apply(store, peer: str, total: int, w=None):
    return store.eval(_APPLY, 1, KEY, peer, index(store) if w is None else w, total)


def state(store) -> dict:
    return {k.decode(): v.decode() for k, v in store.hgetall(KEY).items()}


def test_a_region_admits_its_share_and_counts_the_demand(stores):
    eu = stores[0]
    assert ask(eu, share=10, count=12) == [1] * 10 + [0, 0]
    s = state(eu)
    assert (s["c"], s["d"], s["g"], s["l"]) == ("10", "12", "0", "0")   # 12 asked, 10 admitted
    # The sync finds it among the keys asked for.
    flat = eu.eval(_TAKE_ESCROW, 1, "th:rl:v1:{global}:escrow")
    assert flat[1] == KEY.encode() and [int(x) for x in flat[2:8]] == [index(eu), 10, 0, 0, 12, 0]
    assert eu.smembers("th:rl:v1:{global}:escrow") == set()   # taken


def test_a_weighted_request_takes_its_cost_from_the_share(stores):
    eu = stores[0]
    assert ask(eu, share=10, count=3, cost=4) == [1, 1, 0]   # 8 of 10 used: 4 more would pass the share
    assert ask(eu, share=10, cost=2) == [1]
    s = state(eu)
    assert (s["c"], s["d"]) == ("10", "14")


def test_a_loan_is_what_the_lender_holds_beyond_its_own_need(stores):
    us = stores[1]
    ask(us, share=10, count=3)
    # Early in its window us has no rate of its own yet and no last window: it keeps 1.
    assert lend(us, "eu", asked=50, share=10) == [index(us), 6]
    assert state(us)["l"] == "6" and state(us)["l:eu"] == f"{index(us)}:6"
    # What it holds now is 10 - 6 lent - 3 used = 1, all kept: nothing more.
    assert lend(us, "eu", asked=50, share=10) == [index(us), 6]
    assert ask(us, share=10, count=2) == [1, 0]
    # A loan asked for another window lends nothing.
    assert us.eval(_LEND, 1, KEY, "eu", index(us) - 1, 5, 10, WINDOW_MS, 120) == [index(us), 0]


def test_a_lender_keeps_its_projected_need(stores):
    us = stores[1]
    # Last window's demand (q) of 100 per day-long window: early in this one, us expects ~100 more.
    us.hset(KEY, mapping={"w": index(us), "c": 0, "p": 0, "g": 0, "l": 0, "d": 0, "q": 8})
    assert lend(us, "eu", asked=50, share=10) == [index(us), 0]   # keeps ceil(8 × ~1 × 1.2) + 1 = 11 > 10


def test_a_loan_is_counted_once_however_often_its_answer_comes(stores):
    eu, us = stores[0], stores[1]
    ask(eu, share=10, count=10)
    assert ask(eu, share=10) == [0]
    total = lend(us, "eu", asked=5, share=10)[1]
    assert total == 5
    assert apply(eu, "us", total) == 5
    assert apply(eu, "us", total) == 0          # the same answer again (a retry): nothing added
    assert ask(eu, share=10, count=6) == [1] * 5 + [0]
    # A lost answer is caught up by the next: us answers its running total.
    assert lend(us, "eu", asked=2, share=10)[1] == 7
    assert apply(eu, "us", 7) == 2
    assert ask(eu, share=10, count=3) == [1, 1, 0]
    # A loan for a window this region has left is not counted.
    assert apply(eu, "us", 9, w=index(eu) - 1) == 0


def test_no_interleaving_of_requests_and_loans_admits_more_than_the_limit(stores):
    """Three regions (shares 10 each of 30); random requests, loans asked by anyone of anyone,
    and answers that are lost or delivered late, in any order. The admissions never pass 30."""
    rng = random.Random(7)
    names = ["ap", "eu", "us"]
    by_name = dict(zip(names, stores))
    pending = []   # (borrower, lender, total) answers not yet applied
    admitted = 0
    for _ in range(400):
        step = rng.random()
        if step < 0.5:
            admitted += sum(ask(by_name[rng.choice(names)], share=10, count=rng.randint(1, 3)))
        elif step < 0.8:
            borrower, lender = rng.sample(names, 2)
            _, total = lend(by_name[lender], borrower, rng.randint(1, 8), 10, headroom=rng.choice([0, 120]))
            if rng.random() < 0.8:      # else the answer is lost
                pending.append((borrower, lender, total))
        elif pending:
            borrower, lender, total = pending.pop(rng.randrange(len(pending)))   # late, out of order
            apply(by_name[borrower], lender, total)
        assert admitted <= 30
    counts = [int(state(s).get("c", 0)) for s in stores]
    assert sum(counts) == admitted
    assert admitted >= 20   # loans move share: more than a region's own 10 gets used
