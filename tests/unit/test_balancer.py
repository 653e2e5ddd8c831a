from tollhouse.upstream.balancer import SmoothWeightedRoundRobin


class T:
    def __init__(self, name, weight):
        self.name, self.weight = name, weight


def test_smooth_weighted_round_robin_spreads_by_weight_without_bursts():
    targets = [T("a", 5), T("b", 1), T("c", 1)]
    rr = SmoothWeightedRoundRobin(targets)
    picks = [rr.pick().name for _ in range(7)]
    assert picks == ["a", "a", "b", "a", "c", "a", "a"]
    many = [rr.pick().name for _ in range(700)]
    assert many.count("a") == 500 and many.count("b") == 100


def test_equal_weights_alternate():
    rr = SmoothWeightedRoundRobin([T("a", 1), T("b", 1)])
    assert [rr.pick().name for _ in range(4)] == ["a", "b", "a", "b"]
