"""Adaptive concurrency (docs/upstreams.md, "Adaptive concurrency"): how many requests an
upstream serves at once without queueing, learnt from its latency, as Envoy's adaptive
concurrency filter does (a gradient controller with a periodic minimum-RTT probe).

- Every request to the upstream is admitted under the limit (it holds a slot from
  before its first attempt to the end of its answer, retries included).
- Over the limit, it waits in a bounded queue, at most `queue_timeout`, then gets 503
  with `Retry-After` and is counted as shed. Higher tiers (`tiers`, highest first) are
  served from the queue first, and when the queue is full a lower tier's waiter is
  shed to make room: free traffic is shed before premium.
- The minimum RTT: at start and every `probe_interval`, the limit is pinned at
  `min_limit` until PROBE_SAMPLES requests have ended; their median latency is the
  upstream's latency without queueing.
- Every `window`, the median latency of the requests that ended (sample) gives the
  gradient = clamp((min RTT x (1 + BUFFER)) / sample, 0.5, 2), and the new limit is
  limit x gradient + sqrt(limit x gradient), within [min_limit, max_limit]. Unqueued,
  the limit grows; once requests queue inside the upstream its latency rises and the
  limit falls back to about what it serves at once. A slower or faster upstream is
  followed at once, and its new minimum is measured at the next probe.
"""
from __future__ import annotations

import math
from collections import deque
from time import perf_counter

from ..pipeline import Reply

BUFFER = 0.25          # latency allowed over the minimum before the limit shrinks
PROBE_SAMPLES = 20     # requests that measure the minimum RTT


class AdaptiveConcurrency:
    __slots__ = ("name", "config", "loop", "limit", "in_flight", "queues", "waiting", "ranks", "min_rtt", "samples",
                 "window_started", "probing", "probe_started", "next_probe", "shed", "busiest")

    def __init__(self, name: str, config, loop):
        self.name = name
        self.config = config
        self.loop = loop
        self.limit = float(config.initial_limit)
        self.in_flight = 0
        self.ranks = {tier: i for i, tier in enumerate(config.tiers)}
        self.queues = [deque() for _ in range(len(config.tiers) + 1)]   # by rank: 0 the highest tier
        self.waiting = 0
        self.min_rtt = 0.0
        self.samples: list[float] = []
        self.window_started = perf_counter()
        self.probing = True      # measuring the minimum RTT, at min_limit
        self.probe_started = 0.0
        self.next_probe = 0.0
        self.busiest = 0         # the most in flight during this window
        self.shed: dict[str, int] = {}   # tier -> requests shed

    # --- admission --------------------------------------------------------------------------
    def _rank(self, exchange) -> int:
        identity = exchange.identity
        tier = identity.tier if identity is not None else None
        return self.ranks.get(tier or "default", len(self.ranks))

    def allowed(self) -> int:
        return self.config.min_limit if self.probing else int(self.limit)

    def admit(self, exchange):
        """True: go on now. False: queued (the exchange's proxy() is called when admitted).
        A Reply: shed."""
        if self.in_flight < self.allowed():
            self.in_flight += 1
            if self.in_flight > self.busiest:
                self.busiest = self.in_flight
            exchange.admitted = perf_counter()
            return True
        rank = self._rank(exchange)
        if self.waiting >= self.config.queue:
            lowest = max((i for i, q in enumerate(self.queues) if q), default=-1)
            if lowest <= rank:
                return self._shed(exchange)
            victim, timer = self.queues[lowest].pop()   # the lowest tier's newest waiter makes room
            timer.cancel()
            self.waiting -= 1
            if not victim.finished:
                victim.answer(self._shed(victim))
        timer = self.loop.call_later(self.config.queue_timeout, self._expire, exchange)
        self.queues[rank].append((exchange, timer))
        self.waiting += 1
        return False

    def _expire(self, exchange) -> None:
        for queue in self.queues:
            for i, (waiting, _) in enumerate(queue):
                if waiting is exchange:
                    del queue[i]
                    self.waiting -= 1
                    if not exchange.finished:
                        exchange.answer(self._shed(exchange))
                    return

    def _shed(self, exchange) -> Reply:
        identity = exchange.identity
        tier = (identity.tier if identity is not None else None) or "default"
        self.shed[tier] = self.shed.get(tier, 0) + 1
        return Reply.problem(503, "Service Unavailable", f"upstream {self.name} is at its concurrency limit",
                             headers=[("retry-after", "1")])

    def release(self, exchange) -> None:
        """A request admitted here ended: its latency is a sample, its slot goes to a waiter."""
        now = perf_counter()
        self.in_flight -= 1
        if not self.probing or exchange.admitted >= self.probe_started:
            # (a probe counts only the requests it let through: earlier ones may have queued upstream)
            self._sample(now - exchange.admitted, now)
        exchange.admitted = 0.0
        self._dispatch()

    def _dispatch(self) -> None:
        while self.waiting and self.in_flight < self.allowed():
            queue = next(q for q in self.queues if q)
            exchange, timer = queue.popleft()
            timer.cancel()
            self.waiting -= 1
            if exchange.finished:
                continue
            self.in_flight += 1
            exchange.admitted = perf_counter()
            exchange.proxy()

    # --- the limit -------------------------------------------------------------------------
    def _sample(self, latency: float, now: float) -> None:
        samples = self.samples
        samples.append(latency)
        if self.probing:
            if len(samples) >= PROBE_SAMPLES:
                self.min_rtt = _median(samples)
                self.samples = []
                self.probing = False
                self.window_started = now
                self.next_probe = now + self.config.probe_interval
                self._dispatch()
            return
        if now - self.window_started < self.config.window or len(samples) < 5:
            return
        sample = _median(samples)
        self.samples = []
        self.window_started = now
        if sample < self.min_rtt:
            self.min_rtt = sample   # the upstream got faster: a new minimum, without waiting for a probe
        gradient = max(0.5, min(2.0, self.min_rtt * (1 + BUFFER) / sample)) if sample > 0 else 2.0
        if gradient > 1 and self.busiest < self.limit / 2:
            gradient = 1.0   # not limited by the limit (too few requests to need it): no evidence to raise it
        self.busiest = self.in_flight
        limit = self.limit * gradient
        cfg = self.config
        self.limit = max(float(cfg.min_limit), min(float(cfg.max_limit), limit + math.sqrt(limit)))
        if now >= self.next_probe:
            self.probing = True   # measure the minimum again: the upstream may have changed
            self.probe_started = now
        self._dispatch()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
