"""Locality-aware balancing (docs/regions.md, "Regional routing"), as Envoy's priority levels.

An upstream with `locality: {local, failover, overprovisioning}` puts its targets in
priority levels: the local region's first, then each failover region in order (targets
of regions not named come last). A level's health is its healthy share of targets
(healthy by the active and passive checks), times the overprovisioning factor, at most
100 %. Traffic goes to the first level up to its health, the shortfall to the next, and
so on; when the levels' health adds up to less than 100 %, the shares are scaled up so
that they do (Envoy's normalised total health). So with 1.4 the local region takes
everything until fewer than 1/1.4 (71 %) of its targets are healthy, then spills in
proportion; a region with no healthy target is skipped; and traffic comes back as
targets recover, without a reload.

With `zone` (this gateway's zone), the local region is two levels: its targets in that
zone, then the rest of the region, so traffic stays in the zone while enough of it is
healthy and spills within the region before it leaves it.

Within a level the upstream's balancer picks, among that level's targets.
"""
from __future__ import annotations

import random

from ..clock import CLOCK
from .balancer import make_balancer

REFRESH = 0.25   # seconds between recomputations of the levels' shares


def place(target, entry) -> None:
    """A target's region and zone, from the `targets` entry that named it (None where not given)."""
    target.region = getattr(entry, "region", "") or None
    target.zone = getattr(entry, "zone", "") or None


class Level:
    __slots__ = ("region", "targets", "balancer")

    def __init__(self, region: str, targets: list, settings):
        self.region = region   # (two levels have the local region when `zone` is set)
        self.targets = targets
        self.balancer = make_balancer(settings.balancer, targets, settings.hash_key)


def shares(healthy: list[int], totals: list[int], overprovisioning: float) -> list[float]:
    """The share of traffic (0..1) of each level from its healthy and total target counts."""
    health = [min(1.0, overprovisioning * h / t) if t else 0.0 for h, t in zip(healthy, totals)]
    total = min(1.0, sum(health))
    if total <= 0:
        return [0.0] * len(health)
    out, left = [], 1.0
    for h in health:
        share = min(left, h / total)
        out.append(share)
        left -= share
    return out


class Localities:
    """An upstream's levels and their current shares."""

    __slots__ = ("levels", "overprovisioning", "shares", "computed_at")

    def __init__(self, config, targets: list, settings):
        order = [config.local, *config.failover]
        by_region: dict[str, list] = {}
        for t in targets:
            by_region.setdefault(t.region, []).append(t)
        regions = [r for r in order if r in by_region] + sorted(r for r in by_region if r not in order)
        self.levels = [Level(r, by_region[r], settings) for r in regions]
        if config.zone and self.levels and self.levels[0].region == config.local:
            # The local region (the first level, when it has targets) split: the gateway's zone,
            # then the region's other zones.
            local = self.levels[0].targets
            near = [t for t in local if t.zone == config.zone]
            rest = [t for t in local if t.zone != config.zone]
            self.levels[:1] = [Level(config.local, group, settings) for group in (near, rest) if group]
        self.overprovisioning = config.overprovisioning
        self.shares = [1.0] + [0.0] * (len(self.levels) - 1)
        self.computed_at = -1.0

    def current(self, usable) -> list[float]:
        now = CLOCK.now
        if now - self.computed_at >= REFRESH:
            self.computed_at = now
            self.shares = shares([sum(1 for t in level.targets if usable(t, None)) for level in self.levels],
                                 [len(level.targets) for level in self.levels], self.overprovisioning)
        return self.shares

    def choose(self, pool, exchange, tried):
        """A target: a level by its share, then the level's balancer (another usable target of
        the level, then of the next levels in order, if the pick cannot be used)."""
        current = self.current(pool.usable)
        draw = random.random()
        chosen = len(self.levels) - 1
        for i, share in enumerate(current):
            if draw < share:
                chosen = i
                break
            draw -= share
        level = self.levels[chosen]
        target = level.balancer.pick(exchange)
        if pool.usable(target, tried):
            return target
        for other in self.levels[chosen:] + self.levels[:chosen]:
            for t in other.targets:
                if pool.usable(t, tried):
                    return t
        return target

    def by_region(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for level, share in zip(self.levels, self.shares):
            found[level.region] = found.get(level.region, 0.0) + share
        return found
