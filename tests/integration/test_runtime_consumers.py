"""Consumers and API keys managed through the admin listener (docs/auth.md, "Consumers at
run time"): two gateway instances on one real Redis see each other's changes (a revoked
key, a removed consumer, an expired key, a consumer's own limits), the memory store serves
the same API on one instance, bad calls get the status that names what is wrong, and every
change is an audit line that never holds a secret."""
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.support.processes import wait_for

TOKEN = "admin-secret"

CONFIG = """
store: {store}
admin: {{listen: '127.0.0.1:{{admin_port}}', token: {token}}}
access_log: true
tiers:
  free: {{rate_limits: [{{limit: 100, window: 60s}}]}}
  premium: {{rate_limits: [{{limit: 1000, window: 60s}}]}}
consumers:
  - {{id: seeded, tier: free, api_keys: [seeded-key]}}
auth:
  providers:
    keys: {{type: api_key, header: X-API-Key}}
upstreams:
  app: {{targets: ["{upstream}"]}}
routes:
  - name: api
    match: {{prefix: /api}}
    upstream: app
    auth: {{providers: [keys]}}
    rate_limits: [{{limit: 1000, window: 60s}}]
"""


def admin(g, method, path, body=None, token=TOKEN):
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(f"http://127.0.0.1:{g.admin_port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def call(g, key, path="/api/x"):
    req = urllib.request.Request(g.url(path), headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


@pytest.fixture
def fleet(gateway_factory, upstream, shared_redis):
    """Two instances (one of them with two workers) on one Redis, a clean keyspace each test."""
    import subprocess

    subprocess.run(["redis-cli", "-p", str(shared_redis.port), "FLUSHALL"], check=True, capture_output=True)
    config = CONFIG.format(store=shared_redis.url, token=TOKEN, upstream=upstream.url)
    return gateway_factory(config), gateway_factory(config, workers=2)


def test_a_key_made_on_one_instance_works_on_the_other_and_its_revocation_too(fleet):
    a, b = fleet
    status, consumer = admin(a, "POST", "/consumers", {"id": "acme", "tier": "premium", "scopes": ["orders:read"],
                                                        "metadata": {"plan": "gold"}})
    assert status == 201 and consumer["id"] == "acme" and consumer["metadata"] == {"plan": "gold"}
    status, made = admin(a, "POST", "/consumers/acme/keys", {"name": "ci", "ttl": "30d"})
    assert status == 201 and made["key"] and made["prefix"] == made["key"][:6] and made["name"] == "ci"
    assert made["expires"] - made["created"] == pytest.approx(30 * 86400)
    key = made["key"]
    for g in (a, b, b):
        status, headers = call(g, key)
        assert status == 200
    wait_for(lambda: '"request_id"' in b.stdout())   # the access log is written off the request path
    seen = json.loads([line for line in b.stdout().splitlines() if '"request_id"' in line][-1])
    assert seen["consumer"] == "acme"
    # The listing never shows the key or its hash; it shows the prefix.
    status, listed = admin(b, "GET", "/consumers/acme/keys")
    assert status == 200 and [k["id"] for k in listed["keys"]] == [made["id"]]
    assert listed["keys"][0]["prefix"] == key[:6] and key not in json.dumps(listed) and "sha256" not in listed["keys"][0]
    # Revoked on a: b (both its workers had the key cached) refuses it within a second.
    assert admin(a, "DELETE", f"/consumers/acme/keys/{made['id']}")[0] == 204
    revoked = time.monotonic()
    wait_for(lambda: all(call(b, key)[0] == 401 for _ in range(4)), timeout=1.0)
    assert time.monotonic() - revoked < 1.0
    assert call(a, key)[0] == 401


def test_removing_a_consumer_revokes_its_keys_everywhere(fleet):
    a, b = fleet
    admin(a, "POST", "/consumers", {"id": "gone"})
    keys = [admin(a, "POST", "/consumers/gone/keys", {})[1]["key"] for _ in range(2)]
    assert all(call(b, k)[0] == 200 for k in keys)
    assert admin(b, "DELETE", "/consumers/gone")[0] == 204
    wait_for(lambda: all(call(a, k)[0] == 401 and call(b, k)[0] == 401 for k in keys), timeout=1.0)
    assert admin(a, "GET", "/consumers/gone")[0] == 404


def test_a_key_expires_on_its_ttl(fleet):
    a, b = fleet
    admin(a, "POST", "/consumers", {"id": "brief"})
    made = admin(a, "POST", "/consumers/brief/keys", {"ttl": 1})[1]
    assert call(b, made["key"])[0] == 200
    time.sleep(1.2)
    assert call(b, made["key"])[0] == 401 and call(a, made["key"])[0] == 401
    listed = admin(a, "GET", "/consumers/brief/keys")[1]["keys"]
    assert listed[0]["expired"] is True


def test_a_consumers_own_limits_replace_the_routes_across_the_fleet(fleet):
    a, b = fleet
    admin(a, "POST", "/consumers", {"id": "metered", "rate_limits": [{"limit": 3, "window": "60s"}]})
    key = admin(a, "POST", "/consumers/metered/keys", {})[1]["key"]
    statuses = [call(g, key)[0] for g in (a, b, a)]
    assert statuses == [200, 200, 200]
    status, headers = call(b, key)
    assert status == 429   # the fourth, on the other instance: counted together in Redis
    # A changed limit applies at once (the change drops the cached consumer everywhere).
    assert admin(b, "PATCH", "/consumers/metered", {"rate_limits": [{"limit": 10, "window": "60s"}]})[0] == 200
    wait_for(lambda: call(a, key)[0] == 200, timeout=1.0)
    status, headers = call(a, key)
    assert headers.get("ratelimit-limit") == "10"


def test_listing_pages_filters_by_tier_and_shows_the_file_seed(fleet):
    a, _ = fleet
    for i in range(5):
        admin(a, "POST", "/consumers", {"id": f"c{i}", "tier": "premium" if i % 2 else "free"})
    status, page = admin(a, "GET", "/consumers?limit=3")
    assert status == 200 and [c["id"] for c in page["consumers"]] == ["c0", "c1", "c2"] and page["next"] == "c2"
    status, page = admin(a, "GET", f"/consumers?limit=3&cursor={page['next']}")
    assert [c["id"] for c in page["consumers"]] == ["c3", "c4", "seeded"] and page["next"] is None
    assert page["consumers"][2]["source"] == "file"
    status, page = admin(a, "GET", "/consumers?tier=free")
    assert [c["id"] for c in page["consumers"]] == ["c0", "c2", "c4", "seeded"]


def test_bad_calls_get_the_status_that_says_why(fleet):
    a, _ = fleet
    assert admin(a, "POST", "/consumers", {"id": "x"}, token=None)[0] == 401
    assert admin(a, "POST", "/consumers", {"id": "x"}, token="wrong")[0] == 401
    status, answer = admin(a, "POST", "/consumers", {"tier": "free"})
    assert status == 400 and answer["error"].startswith("id")
    status, answer = admin(a, "POST", "/consumers", {"id": "bad id!"})
    assert status == 400 and answer["error"].startswith("id")
    status, answer = admin(a, "POST", "/consumers", {"id": "y", "rate_limits": [{"window": "1m"}]})
    assert status == 400 and answer["error"].startswith("rate_limits[0].limit")
    status, answer = admin(a, "POST", "/consumers", {"id": "y", "tier": "platinum"})
    assert status == 400 and answer["error"].startswith("tier")
    status, answer = admin(a, "POST", "/consumers", {"id": "y", "colour": "red"})
    assert status == 400 and answer["error"].startswith("colour")
    assert admin(a, "POST", "/consumers", b"{not json")[0] == 400
    assert admin(a, "POST", "/consumers", {"id": "dup"})[0] == 201
    assert admin(a, "POST", "/consumers", {"id": "dup"})[0] == 409
    assert admin(a, "GET", "/consumers/nobody")[0] == 404
    assert admin(a, "POST", "/consumers/nobody/keys", {})[0] == 404
    assert admin(a, "DELETE", "/consumers/dup/keys/abcdef")[0] == 404
    status, answer = admin(a, "POST", "/consumers/dup/keys", {"ttl": "soon"})
    assert status == 400 and answer["error"].startswith("ttl")
    status, answer = admin(a, "PATCH", "/consumers/dup", {"id": "other"})
    assert status == 400 and answer["error"].startswith("id")
    # The file's consumers are a read-only seed: 409 naming the file.
    for method, path, body in (("PATCH", "/consumers/seeded", {"tier": "premium"}), ("DELETE", "/consumers/seeded", None),
                               ("POST", "/consumers/seeded/keys", {}), ("POST", "/consumers", {"id": "seeded"})):
        status, answer = admin(a, method, path, body)
        assert status == 409 and a.config_path in answer["error"], (method, path)
    assert call(a, "seeded-key")[0] == 200
    assert a.proc.poll() is None


def test_every_change_is_an_audit_line_without_a_secret(fleet):
    a, _ = fleet
    admin(a, "POST", "/consumers", {"id": "audited"})
    made = admin(a, "POST", "/consumers/audited/keys", {"name": "n"})[1]
    admin(a, "DELETE", f"/consumers/audited/keys/{made['id']}")
    admin(a, "GET", "/consumers/audited")
    wait_for(lambda: a.stdout().count('"audit"') >= 3)
    lines = [json.loads(line) for line in a.stdout().splitlines() if '"audit"' in line]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/consumers", 201), ("POST", "/consumers/audited/keys", 201),
        ("DELETE", f"/consumers/audited/keys/{made['id']}", 204)]
    assert all(x["who"] == {"ip": "127.0.0.1", "admin_token": True} and x["time"].endswith("Z") for x in lines)
    assert made["key"] not in a.stdout() and made["key"] not in a.stderr()


def test_last_used_is_recorded_off_the_request_path(fleet):
    a, _ = fleet
    admin(a, "POST", "/consumers", {"id": "user"})
    made = admin(a, "POST", "/consumers/user/keys", {})[1]
    assert admin(a, "GET", "/consumers/user/keys")[1]["keys"][0]["last_used"] is None
    before = time.time()
    assert call(a, made["key"])[0] == 200
    wait_for(lambda: admin(a, "GET", "/consumers/user/keys")[1]["keys"][0]["last_used"] is not None, timeout=8)
    assert admin(a, "GET", "/consumers/user/keys")[1]["keys"][0]["last_used"] >= before - 1


def test_the_memory_store_serves_the_same_api_on_one_instance(gateway_factory, upstream):
    g = gateway_factory(CONFIG.format(store="memory", token=TOKEN, upstream=upstream.url), workers=2)
    assert admin(g, "POST", "/consumers", {"id": "local"})[0] == 201
    made = admin(g, "POST", "/consumers/local/keys", {})[1]
    # Both workers made the same key (the admin listener drew it once): every connection works.
    assert all(call(g, made["key"])[0] == 200 for _ in range(8))
    assert [k["id"] for k in admin(g, "GET", "/consumers/local/keys")[1]["keys"]] == [made["id"]]
    assert admin(g, "DELETE", f"/consumers/local/keys/{made['id']}")[0] == 204
    assert all(call(g, made["key"])[0] == 401 for _ in range(8))
    assert call(g, "never-made")[0] == 401
