"""Rate limiting through the real gateway, with real Redis (single node and cluster)."""
import json
import time

import pytest

from tests.integration.conftest import basic_config
from tests.support.client import request
from tests.support.load import concurrent_statuses
from tests.support.processes import RedisCluster, wait_for


def limited(limits: str, extra: str = "", upstream_url: str = "", name: str = "limited") -> str:
    return basic_config(upstream_url, extra_routes=f"""  - name: {name}
    match: {{prefix: /limited}}
    upstream: app
    rate_limits:
{limits}
""", extra=extra)


def get(port, target="/limited/x", headers=""):
    return request(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())


REQ = b"GET /limited/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def store_errors(g) -> float:
    """tollhouse_store_errors_total over every store (exported at 0 from start-up)."""
    lines = [line for line in g.get_admin("/metrics")[1].decode().splitlines()
             if line.startswith("tollhouse_store_errors_total{")]
    assert lines, "the series exists from start-up"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_headers_on_allowed_and_429_problem_with_retry_after(gateway_factory, upstream):
    g = gateway_factory(limited("      - {limit: 2, window: 1m, key: ip, algorithm: fixed_window}", upstream_url=upstream.url))
    r = get(g.port)
    assert r.status == 200
    assert r.getheader("ratelimit-limit") == "2" and r.getheader("ratelimit-remaining") == "1"
    assert 0 < int(r.getheader("ratelimit-reset")) <= 60
    assert r.getheader("ratelimit-policy") == '"ip-60s";q=2;w=60'
    assert r.getheader("ratelimit").startswith('"ip-60s";r=1;t=')
    assert get(g.port).status == 200
    r = get(g.port)
    assert r.status == 429
    assert r.getheader("content-type") == "application/problem+json"
    assert int(r.getheader("retry-after")) >= 1
    assert json.loads(r.body)["status"] == 429
    assert get(g.port, "/other").getheader("ratelimit-limit") is None   # only limited routes
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_ratelimit_rejections_total{route="limited"} 1.0' in text
    assert 'tollhouse_ratelimit_decisions_total{result="allowed",route="limited"} 2.0' in text


def test_memory_store_admits_exactly_the_limit_under_concurrency(gateway_factory, upstream):
    g = gateway_factory(limited("      - {limit: 100, window: 1m, key: route}", upstream_url=upstream.url))
    statuses = concurrent_statuses([g.port], 300, REQ)
    assert statuses.count(200) == 100 and statuses.count(429) == 200


def test_three_gateways_sharing_redis_admit_exactly_the_limit(gateway_factory, upstream, redis):
    cfg = limited("      - {limit: 100, window: 1m, key: global, algorithm: fixed_window}\n"
                  "      - {limit: 1000, window: 1m, key: ip, algorithm: token_bucket}",
                  extra=f"store: {redis.url}", upstream_url=upstream.url)
    gateways = [gateway_factory(cfg) for _ in range(3)]
    statuses = concurrent_statuses([g.port for g in gateways], 100, REQ)
    assert statuses.count(200) == 100, statuses.count(200)
    assert statuses.count(429) == 200


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_same_algorithm_in_redis(gateway_factory, upstream, redis, algorithm):
    g = gateway_factory(limited(f"      - {{limit: 3, window: 1m, key: ip, algorithm: {algorithm}}}",
                                extra=f"store: {redis.url}", upstream_url=upstream.url))
    assert [get(g.port).status for _ in range(5)] == [200, 200, 200, 429, 429]


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_requests_sharing_a_key_in_one_script_call_are_counted_one_by_one(gateway_factory, upstream, redis,
                                                                        algorithm):
    # Concurrent requests of one client land in the same batches: the script reads
    # the key once per call and writes it back once, which must count each of them.
    g = gateway_factory(limited(f"      - {{limit: 40, window: 1m, key: ip, algorithm: {algorithm}}}",
                                extra=f"store: {redis.url}", upstream_url=upstream.url))
    statuses = concurrent_statuses([g.port], 120, REQ)
    assert statuses.count(200) == 40 and statuses.count(429) == 80
    r = get(g.port)
    assert r.status == 429 and r.getheader("ratelimit-remaining") == "0"


def test_interleaved_clients_in_one_script_call_are_each_counted_exactly(gateway_factory, upstream, redis):
    # A batch sends consecutive requests with the same keys as one run (keys once, then a
    # count); clients interleaved in every pattern (runs of one, of two, of three) must
    # each get exactly their limit, with a second limit counted across all of them.
    g = gateway_factory(limited("      - {limit: 5, window: 1m, key: 'header:X-User'}\n"
                                "      - {limit: 18, window: 1h, key: route, algorithm: token_bucket}",
                                extra=f"store: {redis.url}", upstream_url=upstream.url))
    pattern = ["a", "a", "b", "a", "c", "c", "c", "b"]
    requests = [f"GET /limited/x HTTP/1.1\r\nHost: a\r\nX-User: {u}\r\nConnection: close\r\n\r\n".encode()
                for u in pattern]
    statuses = concurrent_statuses([g.port], 120, requests)
    for user in "abc":
        mine = [s for i, s in enumerate(statuses) if pattern[i % len(pattern)] == user]
        assert mine.count(200) == 5 and mine.count(429) == len(mine) - 5, (user, mine)
    # 15 admitted in all, and the route's bucket (one token per 200 s) counted each of them
    # once: a sixteenth leaves it 2, tighter than the new client's 4.
    r = get(g.port, headers="X-User: d\r\n")
    assert r.status == 200 and r.getheader("ratelimit-remaining") == "2"


def test_scripts_flushed_from_redis_are_loaded_again(gateway_factory, upstream, redis):
    # EVALSHA answers NOSCRIPT after SCRIPT FLUSH (or a restart with the same data):
    # the gateway sends the script with EVAL, and counting goes on where it was.
    import redis as redis_py

    g = gateway_factory(limited("      - {limit: 4, window: 1m, key: ip, algorithm: fixed_window}",
                                extra=f"store: {redis.url}", upstream_url=upstream.url))
    assert [get(g.port).status for _ in range(2)] == [200, 200]
    redis_py.Redis(port=redis.port).script_flush()
    assert [get(g.port).status for _ in range(3)] == [200, 200, 429]
    assert store_errors(g) == 0


def test_connections_closed_by_redis_while_idle_are_not_reused(gateway_factory, upstream, redis):
    # Redis's `timeout` (or a proxy in between) closes idle client connections:
    # the next call must open a fresh one, not fail (store_failure: closed would 503).
    import redis as redis_py

    redis_py.Redis(port=redis.port).config_set("timeout", 1)
    g = gateway_factory(limited("      - {limit: 100, window: 1m, key: ip}",
                                extra=f"store: {redis.url}\nstore_failure: closed", upstream_url=upstream.url))
    assert get(g.port).status == 200
    time.sleep(2.5)                            # the server drops the gateway's idle connection
    assert [get(g.port).status for _ in range(3)] == [200, 200, 200]
    assert store_errors(g) == 0


def test_limiting_resumes_after_redis_restarts_under_load(gateway_factory, upstream, redis):
    # Concurrent load leaves several connections to Redis open; after a restart
    # all of them are stale (closed by the old server), and none may be reused:
    # the restart costs no failed call at all.
    g = gateway_factory(limited("      - {limit: 1000, window: 1m, key: ip, algorithm: fixed_window}",
                                extra=f"store: {redis.url}\nstore_failure: closed", upstream_url=upstream.url))
    before = concurrent_statuses([g.port], 100, REQ)
    assert before.count(200) == 100, before
    redis.kill()
    redis.start()
    wait_for(lambda: get(g.port).status == 200, timeout=10)
    assert store_errors(g) == 0
    statuses = concurrent_statuses([g.port], 100, REQ)
    assert statuses.count(200) == 100, statuses
    r = get(g.port)
    assert r.status == 200 and int(r.getheader("ratelimit-remaining")) < 1000 - 100


def test_rejected_requests_do_not_keep_a_client_out(gateway_factory, upstream, redis):
    # Sliding window: whatever window N counted weighs on window N+1. If the 50
    # rejected requests below counted, the client would stay out for most of
    # window N+1; as they do not, it is let back in ~20% into it.
    g = gateway_factory(limited("      - {limit: 5, window: 4s, key: ip, algorithm: sliding_window}",
                                extra=f"store: {redis.url}", upstream_url=upstream.url))
    assert [get(g.port).status for _ in range(5)] == [200] * 5
    for _ in range(50):
        last = get(g.port)
        assert last.status == 429
    to_window_end = int(last.getheader("ratelimit-reset"))   # ceil of the seconds left in window N
    time.sleep(to_window_end + 2.5)                           # 1.5 to 2.5 s into window N+1
    assert get(g.port).status == 200


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_ip_key_is_the_first_untrusted_hop_behind_trusted_proxies(gateway_factory, upstream, store, request):
    extra = f"store: {request.getfixturevalue('redis').url}" if store == "redis" else ""
    limits = "      - {limit: 2, window: 1m, key: ip}"
    trusted = gateway_factory(limited(limits, extra=extra, upstream_url=upstream.url)
                              .replace("trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [127.0.0.1]"))

    def statuses(port, n, xff=None):
        return [get(port, headers=f"X-Forwarded-For: {xff}\r\n" if xff else "").status for _ in range(n)]

    # The peer is a trusted proxy: each forwarded client has its own count, and so has the proxy itself.
    assert statuses(trusted.port, 3, "198.51.100.1") == [200, 200, 429]
    assert statuses(trusted.port, 3, "10.9.9.9, 198.51.100.2") == [200, 200, 429]
    assert statuses(trusted.port, 3) == [200, 200, 429]
    # An untrusted peer cannot pick its key by sending X-Forwarded-For.
    untrusted = gateway_factory(limited(limits, extra=extra, upstream_url=upstream.url, name="other"))
    assert [get(untrusted.port, headers=f"X-Forwarded-For: 203.0.113.{i}\r\n").status for i in range(3)] == [
        200, 200, 429]


def test_global_limit_is_shared_by_routes(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: one
    match: {prefix: /one}
    upstream: app
    rate_limits: [{limit: 3, window: 1m, key: global}]
  - name: two
    match: {prefix: /two}
    upstream: app
    rate_limits: [{limit: 3, window: 1m, key: global}, {limit: 10, window: 1m, key: route}]
"""))
    statuses = [get(g.port, p).status for p in ("/one", "/two", "/one", "/two")]
    assert statuses == [200, 200, 200, 429]


def test_keys_by_header_and_tiers(gateway_factory, upstream):
    g = gateway_factory(limited("      - {limit: 1, window: 1m, key: header:X-User}\n      - {tiered: true}",
                                extra="tiers:\n  default: {rate_limits: [{limit: 3, window: 1m, key: ip}]}",
                                upstream_url=upstream.url))
    assert get(g.port, headers="X-User: a\r\n").status == 200
    assert get(g.port, headers="X-User: a\r\n").status == 429
    assert get(g.port, headers="X-User: b\r\n").status == 200
    assert get(g.port, headers="X-User: c\r\n").status == 200
    r = get(g.port, headers="X-User: d\r\n")   # the default tier's 3 per ip are spent
    assert r.status == 429 and "ip-60s" in r.getheader("ratelimit")


def test_a_limit_without_key_counts_per_consumer(gateway_factory, upstream):
    """Two free consumers behind one address each get the tier's 3, and anonymous callers
    are counted per address (issue 16, defect 6: the default key was ip)."""
    import hashlib

    keys = {name: "sha256:" + hashlib.sha256(f"{name}-key".encode()).hexdigest() for name in ("ann", "ben")}
    g = gateway_factory(limited("      - {tiered: true}", upstream_url=upstream.url, extra=f"""tiers:
  free: {{rate_limits: [{{limit: 3, window: 1m}}]}}
  default: {{rate_limits: [{{limit: 2, window: 1m}}]}}
auth: {{providers: {{keys: {{type: api_key}}}}}}
consumers:
  - {{id: ann, tier: free, api_keys: ["{keys['ann']}"]}}
  - {{id: ben, tier: free, api_keys: ["{keys['ben']}"]}}
""").replace("    rate_limits:", "    auth: {providers: [keys], optional: true}\n    rate_limits:"))
    ann = [get(g.port, headers="X-API-Key: ann-key\r\n").status for _ in range(4)]
    ben = [get(g.port, headers="X-API-Key: ben-key\r\n").status for _ in range(4)]
    anonymous = [get(g.port).status for _ in range(3)]
    assert ann == [200, 200, 200, 429] and ben == [200, 200, 200, 429]
    assert anonymous == [200, 200, 429]
    r = get(g.port, headers="X-API-Key: ann-key\r\n")
    assert "consumer-60s" in r.getheader("ratelimit-policy")


def test_store_failure_open_lets_requests_through_without_stalling(gateway_factory, upstream, redis):
    g = gateway_factory(limited("      - {limit: 2, window: 1m, key: ip}", extra=f"store: {redis.url}\nstore_failure: open",
                                upstream_url=upstream.url))
    assert get(g.port).status == 200
    redis.kill()
    t0 = time.monotonic()
    statuses = [get(g.port).status for _ in range(10)]
    assert statuses == [200] * 10
    assert time.monotonic() - t0 < 2.0
    status = json.loads(g.get_admin("/status")[1])["store"]
    assert status["breaker"] == "open" and status["in_force"] == "open"
    assert "store_failure=open in force" in g.stderr()
    redis.start()
    wait_for(lambda: json.loads(g.get_admin("/status")[1])["store"]["breaker"] == "closed", timeout=10)
    assert [get(g.port).status for _ in range(3)] == [200, 200, 429]   # limiting resumed (fresh Redis)


def test_store_failure_closed_answers_503_at_once_even_when_redis_hangs(gateway_factory, upstream, redis):
    g = gateway_factory(limited("      - {limit: 100, window: 1m, key: ip}",
                                extra=f"store: {redis.url}\nstore_failure: closed", upstream_url=upstream.url))
    assert get(g.port).status == 200
    redis.pause()                            # SIGSTOP: connections hang rather than fail
    try:
        first = time.monotonic()
        r = get(g.port)
        assert r.status == 503 and r.getheader("retry-after") == "1"
        assert time.monotonic() - first < 1.5   # bounded by the store timeout
        t0 = time.monotonic()
        assert [get(g.port).status for _ in range(10)] == [503] * 10
        assert time.monotonic() - t0 < 0.5     # the breaker answers at once
    finally:
        redis.resume()
    wait_for(lambda: get(g.port).status == 200, timeout=10)


def test_store_failure_local_divides_the_limit_by_live_instances(gateway_factory, upstream, redis):
    cfg = limited("      - {limit: 10, window: 1m, key: ip, algorithm: fixed_window}",
                  extra=f"store: {redis.url}\nstore_failure: local", upstream_url=upstream.url)
    a, _other = gateway_factory(cfg), gateway_factory(cfg)
    wait_for(lambda: json.loads(a.get_admin("/status")[1])["store"]["live_instances"] == 2, timeout=12)
    redis.kill()
    assert get(a.port).status == 200    # trips the breaker; decided locally: 1 of 10 / 2 instances
    statuses = [get(a.port).status for _ in range(8)]
    assert statuses == [200] * 4 + [429] * 4
    assert json.loads(a.get_admin("/status")[1])["store"]["in_force"] == "local"


def test_redis_cluster(gateway_factory, upstream):
    cluster = RedisCluster().start()
    try:
        cfg = limited("      - {limit: 5, window: 1m, key: ip}\n      - {limit: 50, window: 1m, key: global}",
                      extra=f"store: {cluster.url}", upstream_url=upstream.url)
        g1, g2 = gateway_factory(cfg), gateway_factory(cfg)
        statuses = [get(g.port).status for g in (g1, g2) for _ in range(4)]
        assert statuses.count(200) == 5 and statuses.count(429) == 3
        assert g1.get_admin("/readyz")[0] == 200
    finally:
        cluster.cleanup()
