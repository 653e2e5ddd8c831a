"""Choosing a target for each request."""
from __future__ import annotations


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a,
    never a burst of five to one target."""

    __slots__ = ("targets", "weights", "current", "total", "single")

    def __init__(self, targets):
        self.targets = list(targets)
        self.weights = [t.weight for t in self.targets]
        self.current = [0] * len(self.targets)
        self.total = sum(self.weights)
        self.single = self.targets[0] if len(self.targets) == 1 else None

    def pick(self):
        if self.single is not None:
            return self.single
        current, weights = self.current, self.weights
        best = 0
        for i in range(len(current)):
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return self.targets[best]
