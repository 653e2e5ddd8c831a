"""Response aggregation (docs/aggregation.md) through the real gateway: real upstreams,
the backends called in parallel through the subrequest API, §5's failure rules."""
import json
import time

import pytest

from tests.integration.conftest import ALICE_API_KEY
from tests.support.client import request
from tests.support.processes import refused_port

SECRET = "agg-secret-agg-secret-agg-secret!"


def config(a: str, b: str, extra_routes: str = "", extra: str = "") -> str:
    dead = f"http://127.0.0.1:{refused_port()}"
    return f"""
{extra}
{ALICE_API_KEY}
upstreams:
  a: {{targets: ["{a}"]}}
  b: {{targets: ["{b}"]}}
  dead: {{targets: ["{dead}"], connect_timeout: 200ms}}
routes:
  - name: both
    match: {{path: "/both/{{id}}"}}
    auth: {{providers: [keys], optional: true}}
    aggregate:
      backends:
        profile: {{upstream: a, path: "/json/users/{{id}}?who={{consumer}}&rid={{request_id}}"}}
        orders: {{upstream: b, path: "/json/orders?ms=30&owner={{consumer}}"}}
  - name: echo
    match: {{path: /echo}}
    auth: {{providers: [keys]}}
    aggregate:
      backends:
        one: {{upstream: a, path: /echo-one}}
        two: {{upstream: b, path: /echo-two}}
  - name: partial
    match: {{prefix: /partial}}
    aggregate:
      backends:
        ok: {{upstream: a, path: /json/ok}}
        down: {{upstream: dead, path: /x, default: {{}}}}
        broken: {{upstream: b, path: "/json/x?status=503"}}
        missing: {{upstream: b, path: "/json/x?status=404"}}
        text: {{upstream: b, path: /status/200}}
        slow: {{upstream: b, path: "/json/x?ms=1000", timeout: 100ms, default: []}}
  - name: required
    match: {{prefix: /required}}
    aggregate:
      backends:
        ok: {{upstream: a, path: /json/ok}}
        must: {{upstream: dead, path: /x, required: true}}
  - name: required-404
    match: {{prefix: /req404}}
    aggregate:
      backends:
        ok: {{upstream: a, path: /json/ok}}
        must: {{upstream: b, path: "/json/x?status=404", required: true}}
  - name: strict
    match: {{prefix: /strict}}
    aggregate:
      all_or_nothing: true
      backends:
        ok: {{upstream: a, path: /json/ok}}
        broken: {{upstream: b, path: "/json/x?status=500", default: {{}}}}
  - name: shaped
    match: {{prefix: /shaped}}
    aggregate:
      merge: "examples.aggregate:profile_with_orders"
      backends:
        profile: {{upstream: a, path: /json/profile}}
        orders: {{upstream: b, path: /json/orders}}
  - name: bad-merge
    match: {{prefix: /bad-merge}}
    aggregate:
      merge: "examples.aggregate:fails"
      backends:
        one: {{upstream: a, path: /json/x}}
  - name: shaped-later
    match: {{prefix: /shaped-later}}
    aggregate:
      merge: "examples.aggregate:profile_later"
      backends:
        profile: {{upstream: a, path: /json/profile}}
        orders: {{upstream: b, path: /json/orders}}
  - name: bad-merge-later
    match: {{prefix: /bad-merge-later}}
    aggregate:
      merge: "examples.aggregate:fails_later"
      backends:
        one: {{upstream: a, path: /json/x}}
{extra_routes}
"""


@pytest.fixture(scope="module")
def second():
    from tests.support.upstream import Upstream

    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture
def gw(gateway_factory, upstream, second):
    return gateway_factory(config(upstream.url, second.url))


def get(g, path, headers=""):
    return request(g.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())


def test_backends_are_merged_in_order_with_parameters_encoded(gw, upstream, second):
    r = get(gw, "/both/7", "X-API-Key: alice-key\r\nX-Request-Id: req-123\r\n")
    assert r.status == 200 and r.getheader("content-type") == "application/json"
    assert r.getheader("x-aggregate-complete") == "true"
    body = json.loads(r.body)
    assert list(body) == ["profile", "orders"]
    assert body["profile"] == {"path": "/json/users/7", "query": "who=alice&rid=req-123"}
    assert body["orders"] == {"path": "/json/orders", "query": "ms=30&owner=alice"}
    # The same answers give the same bytes.
    again = get(gw, "/both/7", "X-API-Key: alice-key\r\nX-Request-Id: req-123\r\n")
    assert again.body == r.body
    # Values are percent-encoded where they enter the path or query: a path parameter
    # keeps its escapes but cannot add a query member (request ids are sanitised on arrival).
    body = json.loads(get(gw, "/both/a%20b&who=admin?x=1", "X-Request-Id: r.1:2\r\n").body)
    assert body["profile"] == {"path": "/json/users/a%20b%26who%3Dadmin", "query": "who=&rid=r.1%3A2"}


def test_backends_are_called_in_parallel(gw, second):
    started = time.perf_counter()
    r = get(gw, "/partial/x")
    elapsed = time.perf_counter() - started
    assert r.status == 200
    # Six backends, the slowest cut at its 100 ms timeout: well under their sum.
    assert elapsed < 0.9, elapsed


def test_each_backend_gets_the_callers_identity_headers_and_request_id(gw, upstream, second):
    r = get(gw, "/echo", "X-API-Key: alice-key\r\nX-Request-Id: trace-me-1\r\nAccept-Language: fr\r\n")
    assert r.status == 200
    body = json.loads(r.body)
    for name in ("one", "two"):
        headers = body[name]["headers"]
        assert headers["x-consumer-id"] == "alice" and headers["x-request-id"] == "trace-me-1"
        assert headers["accept-language"] == "fr" and "x-api-key" not in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"
    assert get(gw, "/echo").status == 401   # the route's auth runs first: no backend is called


def test_a_partial_answer_says_what_failed(gw):
    r = get(gw, "/partial/x")
    assert r.status == 200
    assert r.getheader("x-aggregate-complete") == "false" and "no-store" in r.getheader("cache-control")
    body = json.loads(r.body)
    assert body["ok"] == {"path": "/json/ok", "query": ""}
    assert body["down"] == {} and body["slow"] == []               # their defaults
    assert "broken" not in body and "missing" not in body and "text" not in body   # no default: left out
    errors = body["_errors"]
    assert list(errors) == ["down", "broken", "missing", "text", "slow"]   # configured order
    assert errors["down"]["status"] == 502
    assert errors["broken"]["status"] == 503
    assert errors["missing"]["status"] == 404                     # a 4xx is reported, never merged
    assert errors["text"] == {"status": 502, "detail": "the upstream's answer is not JSON"}
    assert errors["slow"]["status"] == 504


def test_required_and_all_or_nothing_fail_the_whole_answer(gw):
    r = get(gw, "/required")
    assert r.status == 502 and r.getheader("content-type") == "application/problem+json"
    problem = json.loads(r.body)
    assert problem["backends"] == {"must": {"status": 502, "detail": problem["backends"]["must"]["detail"]}}
    assert "must" in problem["detail"]
    r = get(gw, "/req404")
    assert r.status == 404   # a required backend's 4xx passes through
    assert json.loads(r.body)["backends"]["must"]["status"] == 404
    r = get(gw, "/strict")
    assert r.status == 502 and json.loads(r.body)["backends"]["broken"]["status"] == 500


def test_a_merge_function_shapes_the_body_and_its_failure_is_a_500(gw):
    r = get(gw, "/shaped")
    assert r.status == 200
    assert json.loads(r.body) == {"name": "/json/profile", "order_count": 1, "sources": ["profile", "orders"]}
    r = get(gw, "/bad-merge")
    assert r.status == 500 and json.loads(r.body)["title"] == "Internal Server Error"
    assert get(gw, "/shaped").status == 200   # and the gateway goes on


def test_an_async_merge_function_is_awaited_and_its_failure_is_a_500(gw):
    r = get(gw, "/shaped-later")
    assert r.status == 200
    assert json.loads(r.body) == {"name": "/json/profile", "order_count": 1, "sources": ["profile", "orders"]}
    r = get(gw, "/bad-merge-later")
    assert r.status == 500 and json.loads(r.body)["title"] == "Internal Server Error"
    assert get(gw, "/shaped-later").status == 200


def test_head_and_other_methods(gw):
    r = request(gw.port, b"HEAD /both/1 HTTP/1.1\r\nHost: t\r\n\r\n", method="HEAD")
    assert r.status == 200 and r.body == b"" and int(r.getheader("content-length")) > 0
    r = request(gw.port, b"POST /both/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    assert r.status == 405 and r.getheader("allow") == "GET, HEAD"


def test_metrics_and_access_log_name_the_backends(gw):
    get(gw, "/partial/x")
    get(gw, "/both/1")
    metrics = gw.get_admin("/metrics")[1].decode()
    assert 'tollhouse_aggregate_backend_results_total{backend="ok",result="ok",route="partial"} 1.0' in metrics
    assert 'tollhouse_aggregate_backend_results_total{backend="broken",result="server_error",route="partial"} 1.0' \
        in metrics
    assert 'tollhouse_aggregate_backend_results_total{backend="slow",result="timeout",route="partial"} 1.0' in metrics
    assert 'tollhouse_aggregate_backend_results_total{backend="text",result="invalid",route="partial"} 1.0' in metrics
    assert 'tollhouse_aggregate_backend_results_total{backend="down",result="unavailable",route="partial"} 1.0' \
        in metrics
    assert 'tollhouse_aggregate_backend_duration_seconds_count{backend="orders",route="both"} 1.0' in metrics
    from tests.support.processes import wait_for

    lines = wait_for(lambda: [json.loads(x) for x in gw.stdout().splitlines() if '"route":"partial"' in x])
    assert lines[0]["aggregate"] == "partial: down,broken,missing,text,slow"
    done = wait_for(lambda: [json.loads(x) for x in gw.stdout().splitlines() if '"route":"both"' in x])
    assert done[0]["aggregate"] == "complete" and done[0]["upstream"] is None


def test_an_aggregated_answer_is_cached_under_the_routes_rules(gateway_factory, upstream, second):
    g = gateway_factory(config(upstream.url, second.url, extra_routes="""
  - name: cached
    match: {prefix: /cached}
    cache: {ttl: 30s}
    aggregate:
      backends:
        one: {upstream: a, path: /json/one}
"""))
    first, again = get(g, "/cached"), get(g, "/cached")
    assert first.getheader("x-cache-status") == "MISS" and again.getheader("x-cache-status") == "HIT"
    assert again.body == first.body
    # A partial answer is never stored.
    assert get(g, "/partial/x").getheader("x-cache-status") is None


def test_config_errors_name_the_key(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("""
upstreams:
  a: {targets: ["http://127.0.0.1:1"]}
routes:
  - name: agg
    match: {path: "/x/{id}", methods: [GET, POST]}
    upstream: a
    aggregate:
      merge: "nowhere.module:fn"
      backends:
        one: {upstream: nope, path: "/y/{idd}"}
""")
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    for expected in ("routes[0].aggregate.merge", "cannot import nowhere.module",
                     "routes[0].upstream", "routes[0].match.methods", "routes[0].aggregate.backends.one.upstream",
                     "routes[0].aggregate.backends.one.path", "{idd} is not a path parameter"):
        assert expected in out.stdout + out.stderr, (expected, out.stdout + out.stderr)
