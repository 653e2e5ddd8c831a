"""The built-in OAuth 2.0 server: client credentials, rotation with reuse detection, revocation, JWKS."""
import base64
import hashlib
import json
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.integration.conftest import basic_config
from tests.support.client import request


def post_form(port, path, form: dict, basic=None):
    body = urllib.parse.urlencode(form).encode()
    auth = ""
    if basic:
        auth = "Authorization: Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode() + "\r\n"
    return request(port, f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         f"Content-Length: {len(body)}\r\n{auth}\r\n".encode() + body, "POST")


def get(port, target, bearer=None):
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return request(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{auth}\r\n".encode())


def _config(upstream_url, key_path, store="memory"):
    return basic_config(upstream_url, extra_routes="""  - name: orders
    match: {prefix: /orders}
    upstream: app
    auth: {providers: [self], scopes: [orders:read]}
""", extra=f"""store: {store}
auth:
  token_endpoint:
    issuer: https://gateway.test
    signing_key: {key_path}
    access_ttl: 5m
    refresh_ttl: 1d
consumers:
  - id: alice
    tier: premium
    client_id: alice-cli
    client_secret: alice-secret
    scopes: [orders:read, orders:write]
  - id: bob
    client_id: bob-cli
    client_secret: "sha256:{hashlib.sha256(b'bob-secret').hexdigest()}"
    scopes: [orders:read]
""")


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def oauth(request, upstream, tmp_path_factory):
    from tests.support.processes import Gateway

    d = tmp_path_factory.mktemp("signing")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if request.param == "rsa" \
        else ed25519.Ed25519PrivateKey.generate()
    path = d / "signing.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    g = Gateway(_config(upstream.url, path)).start()
    yield g, request.param
    g.cleanup()


def test_client_credentials_basic_and_post_and_the_token_works_on_routes(oauth):
    g, kind = oauth
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials", "scope": "orders:read"},
                  basic=("alice-cli", "alice-secret"))
    assert r.status == 200, r.body
    assert r.getheader("cache-control") == "no-store"
    body = json.loads(r.body)
    assert body["token_type"] == "Bearer" and body["scope"] == "orders:read" and body["refresh_token"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == ("RS256" if kind == "rsa" else "EdDSA") and header["kid"]
    h = json.loads(get(g.port, "/orders/1", body["access_token"]).body)["headers"]
    assert h["x-consumer-id"] == "alice" and h["x-consumer-tier"] == "premium"
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials", "client_id": "bob-cli",
                                            "client_secret": "bob-secret"})
    assert r.status == 200 and json.loads(r.body)["scope"] == "orders:read"


def test_client_errors(oauth):
    g, _ = oauth
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=("alice-cli", "wrong"))
    assert r.status == 401 and json.loads(r.body)["error"] == "invalid_client"
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials", "scope": "orders:read admin"},
                  basic=("bob-cli", "bob-secret"))
    assert r.status == 400 and json.loads(r.body)["error"] == "invalid_scope"
    r = post_form(g.port, "/oauth/token", {"grant_type": "password"}, basic=("bob-cli", "bob-secret"))
    assert r.status == 400 and json.loads(r.body)["error"] == "unsupported_grant_type"
    assert r.getheader("cache-control") == "no-store"


def test_jwks_serves_the_public_key_only_and_verifies_issued_tokens(oauth):
    g, _ = oauth
    jwks = json.loads(get(g.port, "/.well-known/jwks.json").body)
    (key,) = jwks["keys"]
    assert "d" not in key and "p" not in key and key["use"] == "sig"
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=("alice-cli", "alice-secret"))
    access = json.loads(r.body)["access_token"]
    claims = jwt.decode(access, jwt.PyJWK(key).key, algorithms=[key["alg"]], issuer="https://gateway.test")
    assert claims["sub"] == "alice" and claims["scope"] == "orders:read orders:write"


def test_refresh_rotates_and_reuse_revokes_the_family(oauth):
    g, _ = oauth
    creds = ("alice-cli", "alice-secret")
    first = json.loads(post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=creds).body)
    r1 = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                   basic=creds)
    assert r1.status == 200
    second = json.loads(r1.body)
    assert second["refresh_token"] != first["refresh_token"]
    # Replaying the first (already used) refresh token: refused, and the family dies.
    replay = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                       basic=creds)
    assert replay.status == 400 and json.loads(replay.body)["error"] == "invalid_grant"
    after = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
                      basic=creds)
    assert after.status == 400 and json.loads(after.body)["error"] == "invalid_grant"


def test_refresh_token_of_another_client_and_revocation(oauth):
    g, _ = oauth
    alice = ("alice-cli", "alice-secret")
    tokens = json.loads(post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=alice).body)
    stolen = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                       basic=("bob-cli", "bob-secret"))
    assert stolen.status == 400
    fresh = json.loads(post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=alice).body)
    revoked = post_form(g.port, "/oauth/revoke", {"token": fresh["refresh_token"]}, basic=alice)
    assert revoked.status == 200
    r = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]},
                  basic=alice)
    assert r.status == 400 and json.loads(r.body)["error"] == "invalid_grant"
    assert post_form(g.port, "/oauth/revoke", {"token": "never-issued"}, basic=alice).status == 200


def test_self_tokens_need_the_route_scope(oauth):
    g, _ = oauth
    r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials", "scope": "orders:write"},
                  basic=("alice-cli", "alice-secret"))
    assert get(g.port, "/orders/1", json.loads(r.body)["access_token"]).status == 403


def test_refresh_tokens_live_in_redis_hashed(upstream, tmp_path, gateway_factory):
    from tests.support.processes import RedisServer
    import subprocess
    redis = RedisServer().start()
    try:
        key = ed25519.Ed25519PrivateKey.generate()
        path = tmp_path / "k.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        g = gateway_factory(_config(upstream.url, path, store=redis.url))
        creds = ("alice-cli", "alice-secret")
        first = json.loads(post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=creds).body)
        keys = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan"], capture_output=True, text=True).stdout
        assert first["refresh_token"] not in keys
        assert "th:rt:v1:" + hashlib.sha256(first["refresh_token"].encode()).hexdigest() in keys
        ok = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                       basic=creds)
        assert ok.status == 200
        replay = post_form(g.port, "/oauth/token", {"grant_type": "refresh_token",
                                                     "refresh_token": first["refresh_token"]}, basic=creds)
        assert replay.status == 400
    finally:
        redis.cleanup()


def test_global_ip_rules_guard_the_token_endpoint(upstream, tmp_path):
    from tests.support.processes import Gateway

    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "signing.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    g = Gateway(_config(upstream.url, path).replace("store: memory", "store: memory\nip: {deny: [127.0.0.0/8]}"))
    g.start()
    try:
        r = post_form(g.port, "/oauth/token", {"grant_type": "client_credentials"}, basic=("alice-cli", "alice-secret"))
        assert r.status == 403
        assert get(g.port, "/.well-known/jwks.json").status == 403
    finally:
        g.cleanup()
