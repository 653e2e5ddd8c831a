"""Choosing a target for each request (upstreams.*.balancer)."""
from __future__ import annotations

import hashlib
import random
from bisect import bisect


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a,
    never a burst of five to one target."""

    __slots__ = ("targets", "weights", "current", "total")

    def __init__(self, targets):
        self.targets = list(targets)
        self.weights = [t.weight for t in self.targets]
        self.current = [0] * len(self.targets)
        self.total = sum(self.weights)

    def pick(self, exchange=None):
        current, weights = self.current, self.weights
        best = 0
        for i in range(len(current)):
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return self.targets[best]


class LeastConnections:
    """The target with the fewest requests in flight per unit of weight
    (ties broken by smooth weighted round robin, so idle targets share)."""

    __slots__ = ("targets", "tiebreak")

    def __init__(self, targets):
        self.targets = list(targets)
        self.tiebreak = SmoothWeightedRoundRobin(targets)

    def pick(self, exchange=None):
        best = None
        best_load = None
        for t in self.targets:
            load = t.in_flight / t.weight
            if best_load is None or load < best_load:
                best, best_load = [t], load
            elif load == best_load:
                best.append(t)
        if len(best) == 1:
            return best[0]
        while True:   # round robin among the least loaded
            t = self.tiebreak.pick()
            if t in best:
                return t


class TwoRandomChoices:
    """Power of two choices on in-flight requests (weighted sampling)."""

    __slots__ = ("targets", "weights", "rand")

    def __init__(self, targets, rand=None):
        self.targets = list(targets)
        self.weights = [t.weight for t in self.targets]
        self.rand = rand or random.Random()

    def pick(self, exchange=None):
        a, b = self.rand.choices(self.targets, self.weights, k=2)
        if a is b and len(self.targets) > 1:
            b = self.rand.choice([t for t in self.targets if t is not a])
        return a if a.in_flight / a.weight <= b.in_flight / b.weight else b


class ConsistentHash:
    """A hash ring (160 points per unit of weight): when a target leaves, only
    the keys it held move (~1/N of them)."""

    POINTS = 160
    __slots__ = ("targets", "ring", "owners", "key_of")

    def __init__(self, targets, hash_key: str):
        self.targets = list(targets)
        points = []
        for t in self.targets:
            for i in range(self.POINTS * t.weight):
                points.append((_hash(f"{t.url}#{i}".encode()), t))
        points.sort(key=lambda p: p[0])
        self.ring = [p[0] for p in points]
        self.owners = [p[1] for p in points]
        self.key_of = _key_function(hash_key)

    def pick(self, exchange=None):
        key = self.key_of(exchange) if exchange is not None else b""
        i = bisect(self.ring, _hash(key)) % len(self.ring)
        return self.owners[i]


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _key_function(hash_key: str):
    kind, _, name = hash_key.partition(":")
    if kind == "ip":
        return lambda ex: ex.client_ip.encode()
    if kind == "consumer":
        return lambda ex: (ex.consumer or ex.client_ip).encode()
    if kind == "path":
        return lambda ex: ex.path
    if kind == "header":
        return lambda ex: (ex.header(name) or "").encode("latin-1")
    if kind == "cookie":
        from ..exchange.request import cookie_value   # here: the pool imports this module as it initialises

        return lambda ex: (cookie_value(ex, name) or "").encode("latin-1")
    raise ValueError(f"unknown hash_key {hash_key!r}")


def make_balancer(kind: str, targets, hash_key: str = "ip"):
    if kind == "least_connections":
        return LeastConnections(targets)
    if kind == "two_random_choices":
        return TwoRandomChoices(targets)
    if kind == "consistent_hash":
        return ConsistentHash(targets, hash_key)
    return SmoothWeightedRoundRobin(targets)
