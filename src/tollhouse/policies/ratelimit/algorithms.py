"""The three algorithms, for the memory store; ratelimit.lua is their twin for Redis.

Every function decides for *all* limits of one request together: each limit
is evaluated, and only if all allow is the request counted in any of them
(a rejected request consumes nothing). Times are seconds (floats).

State per limit and key:
- fixed_window:   [window index, count]
- sliding_window: [window index, count this window, count previous window]
  (the weighted previous-window counter: estimate = prev * (1 - elapsed) + cur)
- token_bucket:   GCRA's theoretical arrival time (TAT), capacity `burst`,
  one token per window/limit seconds.
The memory store keeps these states in a `LimitTable` per limit.
"""
from __future__ import annotations

FIXED, SLIDING, BUCKET = 0, 1, 2
ALGORITHMS = {"fixed_window": FIXED, "sliding_window": SLIDING, "token_bucket": BUCKET}


def evaluate(algo: int, limit: int, window: float, burst: int, state, now: float, cost: int = 1):
    """(Decision fields..., new state if counted) for one limit; the request weighs `cost`
    (1, or what a weighted limit's `cost` names, such as a GraphQL operation's estimate)."""
    if algo == BUCKET:
        interval = window / limit
        tat = state if state is not None and state > now else now
        new_tat = tat + interval * cost
        allow_at = new_tat - burst * interval
        if now < allow_at - 1e-9:
            # What is left: more than 0 only for a request weighing more than 1.
            return False, int((now - tat) / interval + burst + 1e-9), tat - now, allow_at - now, None
        remaining = int((now - allow_at) / interval + 1e-9)
        return True, remaining, new_tat - now, 0.0, new_tat
    index = int(now // window)
    window_end = (index + 1) * window
    if state is None or state[0] < index - 1:
        cur, prev = 0, 0
    elif state[0] == index - 1:
        cur, prev = 0, state[1]
    else:
        cur, prev = state[1], state[2] if algo == SLIDING else 0
    if algo == FIXED:
        if cur + cost > limit:
            return False, max(0, limit - cur), window_end - now, window_end - now, None
        return True, limit - cur - cost, window_end - now, 0.0, [index, cur + cost]
    weight = 1.0 - (now - index * window) / window
    estimate = prev * weight + cur
    if estimate + cost > limit + 1e-9:
        left = limit - estimate + 1e-9
        return False, int(left) if left > 0 else 0, window_end - now, \
            _sliding_retry(limit, window, now, index, cur, prev, cost), None
    room = limit - estimate - cost + 1e-9
    remaining = int(room) if room > 0 else 0   # int() is floor for the positive values kept
    return True, remaining, window_end - now, 0.0, [index, cur + cost, prev]


def _sliding_retry(limit, window, now, index, cur, prev, cost=1) -> float:
    """Seconds until the weighted estimate leaves room for a request of `cost`."""
    room = limit - cost - cur
    if room >= 0 and prev > 0:
        # prev * (1 - f) <= room  =>  f >= 1 - room / prev
        f = 1.0 - room / prev
        return max(0.0, index * window + f * window - now)
    # This window alone is full: wait for the next, where cur becomes prev.
    next_start = (index + 1) * window
    if cur <= 0:
        return next_start - now
    f = max(0.0, 1.0 - (limit - cost) / cur)
    return next_start - now + f * window


class LimitTable:
    """States of one limit, by key, in two generations: entries untouched for
    a full generation are dropped, so memory follows the active keys."""

    __slots__ = ("current", "old", "rotate_at", "period")

    def __init__(self, period: float):
        self.current: dict = {}
        self.old: dict = {}
        self.period = period
        self.rotate_at = 0.0

    def get(self, key, now: float):
        if now >= self.rotate_at:
            if self.rotate_at:
                self.old = self.current
                self.current = {}
            self.rotate_at = now + self.period
        state = self.current.get(key)
        if state is None:
            state = self.old.pop(key, None)
            if state is not None:
                self.current[key] = state
        return state
