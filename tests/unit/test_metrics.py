from tollhouse.observability.metrics import Stats, render


def test_snapshots_of_workers_merge_into_one_exposition():
    a, b = Stats(), Stats()
    a.route("users", "users").observe(b"GET", 200, 0.002)
    b.route("users", "users").observe(b"GET", 200, 0.2)
    b.route("users", "users").observe_upstream(0.01)
    a.inc("store_errors", (("store", "redis"),))
    b.inc("store_errors", (("store", "redis"),), 2)
    text = render([a.snapshot(), b.snapshot()]).decode()
    assert 'tollhouse_requests_total{method="GET",route="users",status="200"} 2.0' in text
    assert 'tollhouse_request_duration_seconds_count{route="users"} 2.0' in text
    assert 'tollhouse_request_duration_seconds_bucket{le="0.0025",route="users"} 1.0' in text
    assert 'tollhouse_request_duration_seconds_bucket{le="+Inf",route="users"} 2.0' in text
    assert 'tollhouse_upstream_duration_seconds_count{upstream="users"} 1.0' in text
    assert 'tollhouse_store_errors_total{store="redis"} 3.0' in text
    assert "tollhouse_workers 2.0" in text


def test_a_tally_is_exported_at_zero_and_adds_to_the_counter_of_its_key():
    a, b = Stats(), Stats()
    quiet = a.tally("aggregate_backend_results", (("backend", "b"), ("result", "invalid")))
    ok = a.tally("aggregate_backend_results", (("backend", "b"), ("result", "ok")))
    assert a.tally("aggregate_backend_results", (("backend", "b"), ("result", "ok"))) is ok   # one cell per key
    ok.value += 1
    ok.value += 1
    a.inc("aggregate_backend_results", (("backend", "b"), ("result", "ok")))   # the same key counted by name too
    b.tally("aggregate_backend_results", (("backend", "b"), ("result", "ok"))).value += 4
    assert quiet.value == 0
    text = render([a.snapshot(), b.snapshot()]).decode()
    assert 'tollhouse_aggregate_backend_results_total{backend="b",result="ok"} 7.0' in text
    assert 'tollhouse_aggregate_backend_results_total{backend="b",result="invalid"} 0.0' in text


class _Connection:
    worker = None
    codec = None


class _Decisions:
    """Stands in for a policy with an outcome: the generic counting is under test."""

    def __init__(self, outcome, metric):
        from tollhouse.pipeline import Policy

        class Observed(Policy):
            pass

        Observed.outcome, Observed.outcome_metric = outcome, metric
        Observed.outcome_of = lambda self, value: value[0] if value.__class__ is tuple else value
        self.policy = Observed(None, None)


def _ended(route, ratelimit=None, cache_status=None):
    from tollhouse.exchange.lifecycle import Exchange

    ex = Exchange(_Connection(), None)
    ex.route, ex.method, ex.status = route, b"GET", 200
    limiter, cache = route.chain.policies
    if ratelimit is not None:
        ex.remember(limiter.slot, ratelimit)
    if cache_status is not None:
        ex.remember(cache.slot, cache_status)
    return ex


def test_policy_outcomes_are_counted_from_the_ended_exchanges():
    from tollhouse.pipeline import Chain
    from tollhouse.routing import RouteTarget

    stats = Stats()
    stats.derive("ratelimit_decisions", "rejected", "ratelimit_rejections")
    chain = Chain([_Decisions("ratelimit", "ratelimit_decisions").policy, _Decisions("cache", "cache_results").policy])
    route = RouteTarget("limited", 0, prefix="/", chain=chain, stats=stats.route("limited", None))
    stats.fold([
        _ended(route, ("allowed", (True, 10, 9, 1.0, 0.0), None, "")),
        _ended(route, ("allowed", (True, 10, 8, 1.0, 0.0), None, ""), "HIT"),
        _ended(route, ("rejected", (False, 10, 0, 1.0, 1.0), None, ""), None),
        _ended(route, "store_down_open", "MISS"),
        _ended(route, None, "HIT"),
        _ended(route),
    ])
    text = render([stats.snapshot()]).decode()
    assert 'tollhouse_ratelimit_decisions_total{result="allowed",route="limited"} 2.0' in text
    assert 'tollhouse_ratelimit_decisions_total{result="rejected",route="limited"} 1.0' in text
    assert 'tollhouse_ratelimit_decisions_total{result="store_down_open",route="limited"} 1.0' in text
    assert 'tollhouse_ratelimit_rejections_total{route="limited"} 1.0' in text
    assert 'tollhouse_cache_results_total{result="HIT",route="limited"} 2.0' in text
    assert 'tollhouse_cache_results_total{result="MISS",route="limited"} 1.0' in text
    assert 'tollhouse_requests_total{method="GET",route="limited",status="200"} 6.0' in text


def test_bucket_is_bisect_left_over_the_bounds():
    """`bucket` scans the bounds instead of calling bisect: the same index for every value,
    the bounds themselves (inclusive upper bounds) and beyond the last (+Inf) included."""
    from bisect import bisect_left

    from tollhouse.observability.metrics import BUCKETS, bucket

    values = [0.0, 1e-9, 10.0001, 1e9, *BUCKETS, *(b * 0.999 for b in BUCKETS), *(b * 1.001 for b in BUCKETS)]
    values += [i / 997 for i in range(12000)]
    assert [bucket(v) for v in values] == [bisect_left(BUCKETS, v) for v in values]
