"""The ratio sampler's decisions made ahead (TracingFactory.gap / ratio_sampled and the
worker's trace_skip, counted down by Exchange.start): the same distribution as one
independent draw per request."""
import random
import statistics
from types import SimpleNamespace

import pytest

from tollhouse.observability.tracing import NEVER, TracingFactory


def factory(kind: str, ratio: float) -> TracingFactory:
    config = SimpleNamespace(endpoint="http://127.0.0.1:9/v1/traces", service_name="t",
                             sampler=SimpleNamespace(type=kind, ratio=ratio))
    return TracingFactory(config, loop=None)


def decisions(f: TracingFactory, n: int) -> list[bool]:
    """n requests without a traceparent, as Exchange.start decides them."""
    worker = SimpleNamespace(trace_skip=f.first_skip())
    out = []
    for _ in range(n):
        if worker.trace_skip > 0:
            worker.trace_skip -= 1   # what Exchange.start does without calling the factory
            out.append(False)
        else:
            out.append(f.ratio_sampled(worker))
    return out


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5])
def test_the_share_sampled_and_the_gaps_match_independent_draws(ratio):
    random.seed(7)
    sampled = decisions(factory("ratio", ratio), 200_000)
    share = sum(sampled) / len(sampled)
    assert abs(share - ratio) < 4 * (ratio * (1 - ratio) / len(sampled)) ** 0.5 + 1e-4
    # Gaps between sampled requests are geometric: mean (1 - p) / p, standard deviation sqrt(1 - p) / p.
    positions = [i for i, s in enumerate(sampled) if s]
    gaps = [b - a - 1 for a, b in zip(positions, positions[1:])]
    assert statistics.mean(gaps) == pytest.approx((1 - ratio) / ratio, rel=0.1)
    assert statistics.pstdev(gaps) == pytest.approx((1 - ratio) ** 0.5 / ratio, rel=0.1)


def test_the_first_request_is_not_always_sampled():
    firsts = [decisions(factory("ratio", 0.1), 1)[0] for _ in range(2000)]
    assert 100 < sum(firsts) < 320   # ~200: the first request is one draw like the others


def test_ratios_zero_and_one():
    assert not any(decisions(factory("ratio", 0.0), 10_000))
    assert factory("ratio", 0.0).gap() == NEVER
    assert all(decisions(factory("ratio", 1.0), 1000))


def test_always_on_is_asked_every_time_and_always_off_never():
    assert factory("always_on", 0.5).first_skip() == 0
    assert factory("always_off", 0.5).first_skip() == NEVER
