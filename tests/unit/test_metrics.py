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


class _Connection:
    worker = None


def _ended(route, ratelimit=None, cache_status=None):
    from tollhouse.exchange import Exchange

    ex = Exchange(_Connection(), None)
    ex.route, ex.method, ex.status = route, b"GET", 200
    ex.ratelimit, ex.cache_status = ratelimit, cache_status
    return ex


def test_policy_outcomes_are_counted_from_the_ended_exchanges():
    from tollhouse.routing import RouteTarget

    stats = Stats()
    route = RouteTarget("limited", 0, prefix="/", stats=stats.route("limited", None))
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
