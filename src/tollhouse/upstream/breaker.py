"""The circuit breaker of one upstream (upstreams.*.circuit_breaker).

closed → open when, over the last `window`, at least `min_requests` ended and
the share of failures (connect errors, resets, timeouts, invalid responses,
5xx) reached `failure_ratio`. Open answers at once (503 + Retry-After)
without touching the upstream. After `open_for`, half-open lets
`half_open_requests` probes through: all succeeding closes the circuit, any
failing opens it again. Outcomes are counted in one-second buckets, so the
request path does two integer increments.
"""
from __future__ import annotations

from ..clock import CLOCK

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}


class CircuitBreaker:
    __slots__ = ("cfg", "state", "buckets", "opened_at", "probes", "probe_successes", "clock", "on_change",
                 "adopted")

    def __init__(self, cfg, clock=CLOCK, on_change=None):
        self.cfg = cfg
        self.state = CLOSED
        self.buckets: dict[int, list[int]] = {}   # second -> [requests, failures]
        self.opened_at = 0.0
        self.probes = 0
        self.probe_successes = 0
        self.clock = clock
        self.on_change = on_change
        self.adopted = False   # opened because another instance did (SharedCircuits)

    def allow(self) -> bool:
        """May a request go to the upstream now?"""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if self.clock.now - self.opened_at < self.cfg.open_for:
                return False
            self._set(HALF_OPEN)
            self.probes = self.probe_successes = 0
        if self.probes < self.cfg.half_open_requests:
            self.probes += 1
            return True
        return False

    def retry_after(self) -> int:
        left = self.cfg.open_for - (self.clock.now - self.opened_at)
        return max(1, int(left + 0.999))

    def record(self, ok: bool) -> None:
        state = self.state
        if state == HALF_OPEN:
            if not ok:
                self._open()
            else:
                self.probe_successes += 1
                if self.probe_successes >= self.cfg.half_open_requests:
                    self.buckets.clear()
                    self._set(CLOSED)
            return
        if state == OPEN:
            return
        second = int(self.clock.now)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0]
            horizon = second - int(self.cfg.window)
            for old in [s for s in self.buckets if s <= horizon]:
                del self.buckets[old]
        bucket[0] += 1
        if not ok:
            bucket[1] += 1
            total = failures = 0
            for requests, failed in self.buckets.values():
                total += requests
                failures += failed
            if total >= self.cfg.min_requests and failures / total >= self.cfg.failure_ratio:
                self._open()

    def _open(self) -> None:
        self.opened_at = self.clock.now
        self._set(OPEN)

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)


class SharedCircuits:
    """With a Redis store, circuits are shared by every gateway instance.

    An instance whose circuit opens writes `th:cb:v1:{upstream}` with a TTL of
    `open_for`; every instance polls those keys (every 0.5 s) and opens its own
    circuit for the time left. Half-open probing stays per instance; a circuit
    that closes deletes the key. A store failure only stops the sharing.
    """

    INTERVAL = 0.5

    def __init__(self, store, pools_getter):
        self.store = store
        self.pools_getter = pools_getter
        self.task = None

    @staticmethod
    def key(upstream: str) -> str:
        return f"th:cb:v1:{{{upstream}}}"

    def attach(self, pools) -> None:
        for name, pool in pools.items():
            if pool.breaker is not None:
                pool.breaker.on_change = lambda state, name=name, pool=pool: self._changed(name, pool, state)

    def _changed(self, name, pool, state) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        if state == OPEN and not getattr(pool.breaker, "adopted", False):
            loop.create_task(self._safe(self.store.set(self.key(name), b"open", pool.breaker.cfg.open_for)))
        elif state == CLOSED:
            loop.create_task(self._safe(self.store.delete(self.key(name))))

    async def _safe(self, coro):
        try:
            await coro
        except Exception:  # noqa: BLE001 - sharing is best effort; local breakers still work
            pass

    def start(self) -> None:
        import asyncio

        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self):
        import asyncio

        client = self.store.client
        while True:
            await asyncio.sleep(self.INTERVAL)
            for name, pool in self.pools_getter().items():
                breaker = pool.breaker
                if breaker is None or breaker.state != CLOSED:
                    continue
                try:
                    ttl_ms = await asyncio.wait_for(client.pttl(self.key(name)), 0.25)
                except Exception:  # noqa: BLE001
                    break
                if ttl_ms and ttl_ms > 0:
                    # Another instance opened it: open here for the time it has left.
                    breaker.adopted = True
                    breaker.opened_at = breaker.clock.now - (breaker.cfg.open_for - ttl_ms / 1000)
                    breaker._set(OPEN)
                    breaker.adopted = False

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
