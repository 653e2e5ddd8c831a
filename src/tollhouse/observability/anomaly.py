"""The gateway's own anomaly marks (docs/monitoring.md, "In the gateway"): per route and
signal (request rate, error ratio, p99), an exponentially weighted mean and variance
of the dashboard's one-second figures (the baseline, with a half-life of half an
hour), and the last minute's exponentially weighted value. The score is how many
standard deviations the last minute is from the baseline. Kept on the admin side,
fed by the dashboard's sampler; exported as `tollhouse_anomaly_score{route,signal}`
and marked on the live dashboard past `monitoring.anomaly.z`.

A route needs WARM_UP seconds of history before it has a score: a new route never
looks anomalous.
"""
from __future__ import annotations

import math

from .metrics import BUCKETS

BASELINE_HALF_LIFE = 1800.0   # seconds
RECENT_HALF_LIFE = 30.0
WARM_UP = 300                 # seconds of samples before a route is scored
_FLOOR = {"rate": 0.5, "error_ratio": 0.005, "p99": 0.005}   # smallest spread: a flat line is not infinitely sure


def _alpha(half_life: float) -> float:
    return 1 - math.exp(math.log(0.5) / half_life)


def _p99(counts: list) -> float | None:
    total = sum(counts)
    if not total:
        return None
    rank = 0.99 * total
    running = 0
    for i, n in enumerate(counts):
        running += n
        if running >= rank:
            return BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
    return BUCKETS[-1]


class _Signal:
    __slots__ = ("mean", "variance", "recent", "samples")

    def __init__(self, value: float):
        self.mean = value
        self.variance = 0.0
        self.recent = value
        self.samples = 0

    def add(self, value: float, slow: float, fast: float) -> None:
        # West's exponentially weighted variance: updated with the same weight as the mean.
        diff = value - self.mean
        increment = slow * diff
        self.mean += increment
        self.variance = (1 - slow) * (self.variance + diff * increment)
        self.recent += fast * (value - self.recent)
        self.samples += 1

    def score(self, floor: float) -> float | None:
        if self.samples < WARM_UP:
            return None
        return (self.recent - self.mean) / max(math.sqrt(self.variance), floor)


class AnomalyScores:
    def __init__(self):
        self.signals: dict[tuple[str, str], _Signal] = {}
        self.slow = _alpha(BASELINE_HALF_LIFE)
        self.fast = _alpha(RECENT_HALF_LIFE)

    def add(self, summary: dict) -> None:
        """One second's summary (dashboard.Summariser); routes without requests count as 0 rate."""
        seen = summary["routes"]
        for route in set(seen) | {r for (r, _) in self.signals}:
            row = seen.get(route)
            requests = row["requests"] if row else 0
            self._add(route, "rate", float(requests))
            if requests:
                self._add(route, "error_ratio", row["errors"] / requests)
                p99 = _p99(row["latency"]) if row.get("latency") else None
                if p99 is not None:
                    self._add(route, "p99", p99)

    def _add(self, route: str, signal: str, value: float) -> None:
        found = self.signals.get((route, signal))
        if found is None:
            found = self.signals[(route, signal)] = _Signal(value)
        found.add(value, self.slow, self.fast)

    def scores(self) -> dict[str, dict[str, float]]:
        """route -> signal -> score, for the routes warmed up."""
        out: dict[str, dict] = {}
        for (route, signal), s in self.signals.items():
            score = s.score(_FLOOR[signal])
            if score is not None:
                out.setdefault(route, {})[signal] = round(score, 3)
        return out

    def exposition(self) -> bytes:
        """`tollhouse_anomaly_score{route,signal}` in Prometheus's text format."""
        lines = [b"# HELP tollhouse_anomaly_score How far a route's last minute is from its own baseline "
                 b"(standard deviations; exponentially weighted)", b"# TYPE tollhouse_anomaly_score gauge"]
        for route, signals in sorted(self.scores().items()):
            for signal, score in sorted(signals.items()):
                name = route.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'tollhouse_anomaly_score{{route="{name}",signal="{signal}"}} {score}'.encode())
        return b"\n".join(lines) + b"\n"
