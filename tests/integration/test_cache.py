"""Response caching through the real gateway, with real upstreams and real Redis."""
import json
import time
from urllib.parse import quote

import pytest

from tests.integration.conftest import basic_config
from tests.support.client import request
from tests.support.load import concurrent_statuses
from tests.support.processes import wait_for
from tests.support.upstream import Upstream


@pytest.fixture
def origin():
    """A fresh upstream per test: its serial counts the fetches of that test alone."""
    u = Upstream().start()
    yield u
    u.stop()


def cached(upstream_url: str, cache: str = "{ttl: 30s}", extra: str = "", auth: str = "",
           upstream_extra: str = "") -> str:
    routes = f"""  - name: cached
    match: {{prefix: /resource}}
    upstream: app
    cache: {cache}
{auth}
  - name: other-cached
    match: {{prefix: /other}}
    upstream: app
    rewrite: /resource
    cache: {cache}
"""
    return basic_config(upstream_url, extra_routes=routes, extra=extra, upstream_extra=upstream_extra)


def get(port, target="/resource", headers="", method="GET"):
    return request(port, f"{method} {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode(), method=method)


def res(**params) -> str:
    return "/resource?" + "&".join(f"{k}={quote(str(v))}" for k, v in params.items())


def log_lines(g) -> list[dict]:
    return [json.loads(line) for line in g.stdout().splitlines() if line.startswith("{")]


def serial(r) -> int:
    return json.loads(r.body)["serial"]


def test_miss_then_hit_with_age_and_metrics(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    first = get(g.port, res(a=1))
    assert first.status == 200 and first.getheader("x-cache-status") == "MISS"
    time.sleep(1.1)
    second = get(g.port, res(a=1))
    assert second.getheader("x-cache-status") == "HIT"
    assert second.body == first.body and origin.serial == 1
    assert int(second.getheader("age")) >= 1
    assert second.getheader("content-type") == "application/json"
    assert second.getheader("x-request-id") and second.getheader("x-request-id") != first.getheader("x-request-id")
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_cache_results_total{result="HIT",route="cached"} 1.0' in text
    assert 'tollhouse_cache_results_total{result="MISS",route="cached"} 1.0' in text
    assert "tollhouse_cache_memory_bytes" in text
    wait_for(lambda: [line.get("cache") for line in log_lines(g) if line.get("route") == "cached"] == ["MISS", "HIT"])


def test_key_ignores_query_order_and_head_shares_get_entries(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    get(g.port, "/resource?a=1&b=2")
    r = get(g.port, "/resource?b=2&a=1")
    assert r.getheader("x-cache-status") == "HIT"
    head = get(g.port, "/resource?a=1&b=2", method="HEAD")
    assert head.getheader("x-cache-status") == "HIT" and head.body == b""
    assert int(head.getheader("content-length")) == len(r.body)
    assert get(g.port, "/resource?a=1&b=3").getheader("x-cache-status") == "MISS"
    assert origin.serial == 2


def test_non_get_bypasses_and_never_stores(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    r = request(g.port, b"POST /resource HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", method="POST")
    assert r.getheader("x-cache-status") == "BYPASS"
    assert get(g.port).getheader("x-cache-status") == "MISS"


@pytest.mark.parametrize("params, why", [
    ({"cc": "no-store"}, "no-store"),
    ({"cc": "private, max-age=60"}, "private"),
    ({"cc": "no-cache"}, "no-cache"),
    ({"cookie": 1}, "set-cookie"),
    ({"status": 500}, "uncacheable status"),
    ({"status": 201}, "uncacheable status"),
    ({"vary": "*"}, "vary star"),
    ({"cc": "max-age=0"}, "already stale"),
    ({"expires": "Thu, 01 Jan 1970 00:00:00 GMT"}, "expired"),
])
def test_uncacheable_responses_are_fetched_every_time(gateway_factory, origin, params, why):
    g = gateway_factory(cached(origin.url))
    target = res(**params)
    a, b = get(g.port, target), get(g.port, target)
    assert (a.getheader("x-cache-status"), b.getheader("x-cache-status")) == ("MISS", "MISS"), why
    assert serial(b) == serial(a) + 1


def test_upstream_max_age_beats_route_ttl_and_s_maxage_beats_max_age(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1m}"))
    get(g.port, res(cc="max-age=1"))
    get(g.port, res(cc="s-maxage=1, max-age=600"))
    time.sleep(1.2)
    assert get(g.port, res(cc="max-age=1")).getheader("x-cache-status") == "MISS"
    assert get(g.port, res(cc="s-maxage=1, max-age=600")).getheader("x-cache-status") == "MISS"


def test_route_ttl_applies_when_upstream_says_nothing(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1s}"))
    get(g.port, res(t=1))
    assert get(g.port, res(t=1)).getheader("x-cache-status") == "HIT"
    time.sleep(1.2)
    assert get(g.port, res(t=1)).getheader("x-cache-status") == "MISS"


def test_authorization_on_public_route_only_gets_shared_responses(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    auth = "Authorization: Bearer abc\r\n"
    # Stored from an anonymous request, but not marked public: never served to a credentialed one.
    get(g.port, res(p=1))
    r = get(g.port, res(p=1), auth)
    assert r.getheader("x-cache-status") == "MISS" and serial(r) == 2
    # A credentialed request's own answer is stored only when public.
    get(g.port, res(p=2), auth)
    assert get(g.port, res(p=2), auth).getheader("x-cache-status") == "MISS"
    get(g.port, res(p=3, cc="public, max-age=60"), auth)
    assert get(g.port, res(p=3, cc="public, max-age=60"), auth).getheader("x-cache-status") == "HIT"
    assert get(g.port, res(p=3, cc="public, max-age=60")).getheader("x-cache-status") == "HIT"
    # Cookies often carry a session: treated like credentials.
    cookie = "Cookie: session=alice\r\n"
    r = get(g.port, res(p=1), cookie)
    assert r.getheader("x-cache-status") == "MISS" and json.loads(r.body)["serial"] == origin.serial
    assert get(g.port, res(p=4), cookie).getheader("x-cache-status") == "MISS"
    assert get(g.port, res(p=4)).getheader("x-cache-status") == "MISS"   # the cookie's answer was not stored
    assert get(g.port, res(p=3, cc="public, max-age=60"), cookie).getheader("x-cache-status") == "HIT"


def test_scope_consumer_keeps_each_callers_data_apart(gateway_factory, origin):
    extra = """
auth:
  providers:
    keys: {type: api_key, header: X-API-Key}
consumers:
  - {id: alice, api_keys: [alice-key]}
  - {id: bob, api_keys: [bob-key]}
"""
    g = gateway_factory(cached(origin.url, "{ttl: 1m, scope: consumer}", extra=extra,
                               auth="    auth: {providers: [keys], optional: true}"))
    alice = get(g.port, res(me=1), "X-API-Key: alice-key\r\n")
    bob = get(g.port, res(me=1), "X-API-Key: bob-key\r\n")
    assert json.loads(alice.body)["consumer"] == "alice" and json.loads(bob.body)["consumer"] == "bob"
    assert bob.getheader("x-cache-status") == "MISS"
    again = get(g.port, res(me=1), "X-API-Key: alice-key\r\n")
    assert again.getheader("x-cache-status") == "HIT" and json.loads(again.body)["consumer"] == "alice"
    anonymous = get(g.port, res(me=1))
    assert anonymous.getheader("x-cache-status") == "MISS" and json.loads(anonymous.body)["consumer"] is None
    assert get(g.port, res(me=1), "X-API-Key: bob-key\r\n").body == bob.body


def test_route_vary_and_response_vary_make_separate_entries(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1m, vary: [Accept-Language]}"))
    en = get(g.port, res(v=1), "Accept-Language: en\r\n")
    fr = get(g.port, res(v=1), "Accept-Language: fr\r\n")
    assert fr.getheader("x-cache-status") == "MISS" and json.loads(fr.body)["language"] == "fr"
    assert json.loads(get(g.port, res(v=1), "Accept-Language: en\r\n").body) == json.loads(en.body)
    # The response's own Vary (a header the route did not name) splits entries too.
    target = res(v=2, vary="Accept-Encoding")
    gz = get(g.port, target, "Accept-Encoding: gzip\r\n")
    br = get(g.port, target, "Accept-Encoding: br\r\n")
    assert br.getheader("x-cache-status") == "MISS" and json.loads(br.body)["encoding"] == "br"
    hit = get(g.port, target, "Accept-Encoding: gzip\r\n")
    assert hit.getheader("x-cache-status") == "HIT" and hit.body == gz.body
    assert get(g.port, target, "Accept-Encoding: br\r\n").body == br.body


def test_conditional_requests_are_answered_304_from_the_cache(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    target = res(etag='"v1"', lm="Tue, 01 Sep 2026 10:00:00 GMT")
    # Even the filling miss answers the client's condition itself and stores the full response.
    first = get(g.port, target, 'If-None-Match: "v1"\r\n')
    assert first.status == 304 and first.body == b"" and first.getheader("etag") == '"v1"'
    assert len(first.headers.get_all("date") or ()) == 1   # RFC 9110 §6.6.1 (issue 16, defect 12)
    assert origin.requests[-1]["headers"].get("if-none-match") is None
    r = get(g.port, target, 'If-None-Match: W/"v0", "v1"\r\n')
    assert r.status == 304 and r.getheader("x-cache-status") == "HIT" and r.getheader("content-length") is None
    assert len(r.headers.get_all("date") or ()) == 1
    assert get(g.port, target, 'If-None-Match: "v2"\r\n').status == 200
    assert get(g.port, target, "If-Modified-Since: Wed, 02 Sep 2026 10:00:00 GMT\r\n").status == 304
    assert get(g.port, target, "If-Modified-Since: Mon, 31 Aug 2026 10:00:00 GMT\r\n").status == 200
    assert origin.serial == 1


def test_fifty_concurrent_misses_reach_the_upstream_once(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    req = f"GET {res(ms=200, s=1)} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    statuses = concurrent_statuses([g.port], 50, req)
    assert statuses == [200] * 50
    assert origin.serial == 1
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_cache_results_total{result="HIT",route="cached"} 49.0' in text


def test_large_responses_stream_through_uncached(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, extra="cache: {max_entry_size: 10KiB}"))
    for params in ({"bytes": 20000}, {"bytes": 20000, "chunked": 1}):
        a, b = get(g.port, res(**params)), get(g.port, res(**params))
        assert len(a.body) == 20000 and len(b.body) == 20000
        assert serial(b) == serial(a) + 1
    small = res(bytes=5000, chunked=1)
    get(g.port, small)
    assert get(g.port, small).getheader("x-cache-status") == "HIT"


def test_stale_while_revalidate_serves_stale_and_refreshes_once(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1s, stale_while_revalidate: 30s}"))
    target = res(w=1, ms=100)
    get(g.port, target)
    time.sleep(1.1)
    stale = [get(g.port, target) for _ in range(3)]
    assert [r.getheader("x-cache-status") for r in stale] == ["STALE"] * 3
    assert all(serial(r) == 1 for r in stale)
    wait_for(lambda: get(g.port, target).getheader("x-cache-status") == "HIT", timeout=5)
    assert serial(get(g.port, target)) == 2
    time.sleep(0.3)
    assert origin.serial == 2   # one refresh, not one per stale answer
    # The refresh is not a client request: no access log line for it (one MISS: the first fetch).
    time.sleep(0.5)   # the access log is written off the loop
    results = [line.get("cache") for line in log_lines(g) if line.get("route") == "cached"]
    assert results.count("MISS") == 1 and set(results) == {"MISS", "STALE", "HIT"}


def test_stale_if_error_serves_stale_when_the_upstream_fails(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1s, stale_if_error: 1m}"))
    target = res(e=1)
    first = get(g.port, target)
    time.sleep(1.1)
    origin.fail_with = 503
    r = get(g.port, target)
    assert r.status == 200 and r.getheader("x-cache-status") == "STALE" and r.body == first.body
    origin.stop()   # refused connections: the gateway's own 502
    r = get(g.port, target)
    assert r.status == 200 and r.getheader("x-cache-status") == "STALE"
    # Without a stored response there is nothing to fall back on.
    assert get(g.port, res(e=2)).status == 502


def test_purge_by_route_prefix_tag_and_all(gateway_factory, origin):
    g = gateway_factory(cached(origin.url))
    targets = [res(x=1, tag="red blue"), res(x=2, tag="blue"), res(x=3)]
    for t in targets:
        get(g.port, t)
    get(g.port, "/other?x=4")

    def statuses():
        return [get(g.port, t).getheader("x-cache-status") for t in targets + ["/other?x=4"]]

    assert statuses() == ["HIT"] * 4
    status, body = g.get_admin("/cache?tag=blue", method="DELETE")
    assert status == 200 and json.loads(body)["purged"] == 2
    assert statuses() == ["MISS", "MISS", "HIT", "HIT"]
    assert json.loads(g.get_admin("/cache?route=other-cached", method="DELETE")[1])["purged"] == 1
    assert statuses() == ["HIT", "HIT", "HIT", "MISS"]
    # The prefix is the normalised request path.
    assert json.loads(g.get_admin("/cache?prefix=/res", method="DELETE")[1])["purged"] == 3
    assert statuses() == ["MISS", "MISS", "MISS", "HIT"]
    assert json.loads(g.get_admin("/cache", method="DELETE")[1])["purged"] == 4
    assert g.get_admin("/cache?colour=red", method="DELETE")[0] == 400
    assert g.get_admin("/cache", method="GET")[0] == 405


def test_workers_each_cache_and_purge_reaches_all(gateway_factory, origin):
    g = gateway_factory(cached(origin.url), workers=2)
    for _ in range(20):
        get(g.port, res(k=1))
    assert origin.serial <= 2
    assert json.loads(g.get_admin("/cache", method="DELETE")[1])["purged"] == origin.serial
    get(g.port, res(k=1))
    assert origin.serial >= 2


# --- Redis ---------------------------------------------------------------------------------

def test_redis_cache_is_shared_by_gateways(gateway_factory, origin, redis):
    cfg = cached(origin.url, extra=f"store: {redis.url}")
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    first = get(a.port, res(r=1, tag="t1"))
    r = get(b.port, res(r=1, tag="t1"))
    assert r.getheader("x-cache-status") == "HIT" and r.body == first.body
    assert get(b.port, res(r=1, tag="t1"), 'If-None-Match: "x"\r\n').status == 200
    assert json.loads(a.get_admin("/cache?tag=t1", method="DELETE")[1])["purged"] == 1
    assert get(b.port, res(r=1, tag="t1")).getheader("x-cache-status") == "MISS"
    get(a.port, res(r=2))
    time.sleep(0.2)   # entries are written to Redis just after the response
    assert json.loads(b.get_admin("/cache?prefix=/resource", method="DELETE")[1])["purged"] == 2
    assert get(a.port, res(r=2)).getheader("x-cache-status") == "MISS"


def test_cold_key_is_fetched_once_across_three_gateways(gateway_factory, origin, redis):
    cfg = cached(origin.url, extra=f"store: {redis.url}")
    gateways = [gateway_factory(cfg) for _ in range(3)]
    req = f"GET {res(ms=300, fleet=1)} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    statuses = concurrent_statuses([g.port for g in gateways], 20, req)
    assert statuses == [200] * 60
    assert origin.serial == 1


def test_a_miss_stored_by_one_gateway_is_a_hit_on_the_next_right_after(gateway_factory, origin, redis):
    """The entry reaches Redis just after the first client's response; a request to
    another instance right then must not fetch it again (issue 16, defect 4)."""
    cfg = cached(origin.url, extra=f"store: {redis.url}")
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    rounds = 40
    for i in range(rounds):
        assert get(a.port, res(seq=i)).getheader("x-cache-status") == "MISS"
        r = get(b.port, res(seq=i))
        assert r.status == 200 and r.getheader("x-cache-status") == "HIT", i
    assert origin.serial == rounds


def test_redis_vary_and_stale_while_revalidate(gateway_factory, origin, redis):
    g = gateway_factory(cached(origin.url, "{ttl: 1s, stale_while_revalidate: 30s}", extra=f"store: {redis.url}"))
    target = res(rv=1, vary="Accept-Language")
    en = get(g.port, target, "Accept-Language: en\r\n")
    assert get(g.port, target, "Accept-Language: fr\r\n").getheader("x-cache-status") == "MISS"
    assert get(g.port, target, "Accept-Language: en\r\n").body == en.body
    time.sleep(1.1)
    assert get(g.port, target, "Accept-Language: en\r\n").getheader("x-cache-status") == "STALE"
    wait_for(lambda: origin.serial == 3, timeout=5)
    wait_for(lambda: get(g.port, target, "Accept-Language: en\r\n").getheader("x-cache-status") == "HIT", timeout=5)


def test_redis_outage_makes_the_cache_a_pass_through(gateway_factory, origin, redis):
    g = gateway_factory(cached(origin.url, extra=f"store: {redis.url}"))
    get(g.port, res(o=1))
    assert get(g.port, res(o=1)).getheader("x-cache-status") == "HIT"
    redis.pause()   # a hung Redis: the worst case, calls time out rather than fail
    try:
        started = time.monotonic()
        statuses = [get(g.port, res(o=1)) for _ in range(10)]
        elapsed = time.monotonic() - started
        assert all(r.status == 200 for r in statuses)
        assert [r.getheader("x-cache-status") for r in statuses][1:] == ["BYPASS"] * 9
        assert elapsed < 2.0, elapsed   # one store timeout at most, not one per request
        text = g.get_admin("/metrics")[1].decode()
        assert "tollhouse_cache_bypass 1.0" in text
    finally:
        redis.resume()
    wait_for(lambda: get(g.port, res(o=1)).getheader("x-cache-status") == "HIT", timeout=10)
    redis.kill()
    assert get(g.port, res(o=1)).status == 200
    r = get(g.port, res(o=1))
    assert r.status == 200 and r.getheader("x-cache-status") == "BYPASS"


def test_stale_if_error_covers_an_open_circuit(gateway_factory, origin):
    g = gateway_factory(cached(origin.url, "{ttl: 1s, stale_if_error: 1m}", upstream_extra=(
        "    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 30s}")))
    target = res(cb=1)
    first = get(g.port, target)
    time.sleep(1.1)
    origin.fail_with = 500
    # One success, then one failure (a key with nothing stored): half failed, the circuit opens.
    assert [get(g.port, res(cb=1, other=i)).status for i in range(3)] == [500, 503, 503]
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_circuit_state{upstream="app"} 1.0' in text
    served = origin.serial
    r = get(g.port, target)
    assert r.status == 200 and r.getheader("x-cache-status") == "STALE" and r.body == first.body
    assert origin.serial == served   # the open circuit answered, not the upstream


def test_redis_cluster_shares_entries_and_purges(gateway_factory, origin):
    from tests.support.processes import RedisCluster

    cluster = RedisCluster().start()
    try:
        cfg = cached(origin.url, extra=f"store: {cluster.url}")
        a, b = gateway_factory(cfg), gateway_factory(cfg)
        for i in range(5):   # keys spread over the cluster's slots
            get(a.port, res(c=i, tag="cl"))
        assert [get(b.port, res(c=i, tag="cl")).getheader("x-cache-status") for i in range(5)] == ["HIT"] * 5
        time.sleep(0.2)
        assert json.loads(b.get_admin("/cache?tag=cl", method="DELETE")[1])["purged"] == 5
        assert get(a.port, res(c=0, tag="cl")).getheader("x-cache-status") == "MISS"
    finally:
        cluster.cleanup()
