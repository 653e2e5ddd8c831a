"""A coarse monotonic clock for the hot path.

Timeouts need "about now", not a system call per use: each worker updates
`CLOCK.now` from its loop every DEADLINE_INTERVAL (20 ms), and the request
path reads the attribute. Precise durations (metrics) use perf_counter.
"""
from __future__ import annotations

import time


class Clock:
    __slots__ = ("now",)

    def __init__(self):
        self.now = time.monotonic()


CLOCK = Clock()
