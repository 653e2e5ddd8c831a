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
