"""/metrics from the real gateway: every documented series exists before its first event."""
import urllib.request

from tests.integration.conftest import basic_config
from tests.support.processes import RedisServer


def test_known_series_start_at_zero_before_any_traffic(gateway_factory, upstream):
    """A series that first appears non-zero loses its first increase(), and alert rules
    cannot tell "none" from "missing" (issue 16, defect 11)."""
    redis = RedisServer().start()
    try:
        g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: guarded
    match: {prefix: /guarded}
    upstream: app
    auth: {providers: [dev]}
    ip: {deny: [192.0.2.0/24]}
    request: {max_body_bytes: 1KiB}
    rate_limits: [{limit: 5, window: 1m}]
    cache: {ttl: 30s}
""", extra=f"""store: {redis.url}
auth: {{providers: {{dev: {{type: jwt, algorithms: [HS256], secret: a-secret-of-enough-length-0123456789}}}}}}
""", upstream_extra=f"""  spare:
    targets: ["{upstream.url}"]
    circuit_breaker: {{failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 30s}}
"""))
        text = g.get_admin("/metrics")[1].decode()
        for series in (
                'tollhouse_ratelimit_decisions_total{result="allowed",route="guarded"} 0.0',
                'tollhouse_ratelimit_decisions_total{result="rejected",route="guarded"} 0.0',
                'tollhouse_ratelimit_rejections_total{route="guarded"} 0.0',
                'tollhouse_cache_results_total{result="HIT",route="guarded"} 0.0',
                'tollhouse_cache_results_total{result="MISS",route="guarded"} 0.0',
                'tollhouse_cache_results_total{result="BYPASS",route="guarded"} 0.0',
                'tollhouse_cache_results_total{result="STALE",route="guarded"} 0.0',
                'tollhouse_auth_failures_total{reason="missing",route="guarded"} 0.0',
                'tollhouse_auth_failures_total{reason="expired",route="guarded"} 0.0',
                'tollhouse_ip_refusals_total{route="guarded"} 0.0',
                'tollhouse_request_refusals_total{reason="body_too_large",route="guarded"} 0.0',
                'tollhouse_store_errors_total{store="redis"} 0.0',
                'tollhouse_cache_bypass 0.0',
                'tollhouse_ratelimit_fallback{mode="open"} 0.0',
                'tollhouse_circuit_state{upstream="app"} 0.0',
                'tollhouse_circuit_state{upstream="spare"} 0.0'):
            assert series in text, series
    finally:
        redis.cleanup()


def test_every_configured_route_has_request_series_from_the_first_scrape(gateway_factory, upstream):
    """rate(tollhouse_requests_total) and histogram_quantile over a route that has had no
    request yet read 0, not nothing: each route's series exist before its first request
    (for each of its methods, or GET when it takes any, with status 200)."""
    g = gateway_factory(basic_config(upstream.url))
    text = g.get_admin("/metrics")[1].decode()
    for series in ('tollhouse_requests_total{method="GET",route="api",status="200"} 0.0',
                   'tollhouse_requests_total{method="GET",route="user",status="200"} 0.0',
                   'tollhouse_requests_total{method="PUT",route="user",status="200"} 0.0',
                   'tollhouse_request_duration_seconds_count{route="api"} 0.0',
                   'tollhouse_request_duration_seconds_bucket{le="+Inf",route="exact"} 0.0'):
        assert series in text, series
    with urllib.request.urlopen(g.url("/api/x"), timeout=5) as r:
        assert r.status == 200
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_requests_total{method="GET",route="api",status="200"} 1.0' in text
    assert 'tollhouse_requests_total{method="GET",route="user",status="200"} 0.0' in text
