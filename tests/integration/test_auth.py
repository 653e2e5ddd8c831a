"""Authentication through the real gateway: every provider, every failure, the classic attacks."""
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.integration.conftest import basic_config
from tests.support.client import request
from tests.support.idp import IdP
from tests.support.processes import wait_for

SECRET = "a-development-secret-long-enough-for-hs512-0123456789abcdefghijkl"


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    made = {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1()),
            "ed": ed25519.Ed25519PrivateKey.generate()}
    paths = {}
    for name, key in made.items():
        (d / f"{name}.pem").write_bytes(_pem_private(key))
        (d / f"{name}.pub.pem").write_bytes(_pem_public(key))
        paths[name] = d / f"{name}.pub.pem"
        paths[name + ".private"] = d / f"{name}.pem"
    return made, paths


def token(key, alg="HS256", sub="alice", ttl=300, headers=None, **claims):
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def get(port, target, auth=None, headers=""):
    extra = f"Authorization: Bearer {auth}\r\n" if auth else ""
    return request(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{extra}{headers}\r\n".encode())


def auth_config(upstream_url, keys_paths, idp_url="http://127.0.0.1:1", extra_auth=""):
    _, paths = keys_paths
    return basic_config(upstream_url, extra_routes="""  - name: hs
    match: {prefix: /hs}
    upstream: app
    auth: {providers: [dev]}
  - name: scoped
    match: {prefix: /scoped}
    upstream: app
    auth: {providers: [dev], scopes: [users:read, users:write]}
  - name: admins
    match: {prefix: /admins}
    upstream: app
    auth: {providers: [dev], roles: [admin, root]}
  - name: maybe
    match: {prefix: /maybe}
    upstream: app
    auth: {providers: [dev], optional: true}
  - name: rsa
    match: {prefix: /rsa}
    upstream: app
    auth: {providers: [rsa]}
  - name: pems
    match: {prefix: /pems}
    upstream: app
    auth: {providers: [p256, p384, ed, ps]}
  - name: jwks
    match: {prefix: /jwks}
    upstream: app
    auth: {providers: [corp]}
  - name: keyed
    match: {prefix: /keyed}
    upstream: app
    auth: {providers: [keys, qkeys]}
  - name: introspected
    match: {prefix: /introspected}
    upstream: app
    auth: {providers: [idp]}
""", extra=f"""auth:
  providers:
    dev: {{type: jwt, algorithms: [HS256, HS384, HS512], secret: "{SECRET}"}}
    rsa: {{type: jwt, algorithms: [RS256, RS384, RS512], public_key: {paths['rsa']}, issuer: https://idp,
          audience: api, leeway: 5s}}
    ps: {{type: jwt, algorithms: [PS256], public_key: {paths['rsa2']}}}
    p256: {{type: jwt, algorithms: [ES256], public_key: {paths['p256']}}}
    p384: {{type: jwt, algorithms: [ES384], public_key: {paths['p384']}}}
    ed: {{type: jwt, algorithms: [EdDSA], public_key: {paths['ed']}}}
    corp: {{type: jwt, algorithms: [RS256, ES256], jwks_url: {idp_url}/jwks.json, jwks_refresh: 1h}}
    keys: {{type: api_key, header: X-API-Key}}
    qkeys: {{type: api_key, query: apikey}}
    idp: {{type: introspection, url: {idp_url}/introspect, client_id: gw, client_secret: gw-secret, cache_ttl: 60s,
          inactive_ttl: 1s}}
{extra_auth}
consumers:
  - {{id: alice, tier: premium, api_keys: [alice-key-123], scopes: [users:read]}}
  - {{id: bob, api_keys: ["sha256:{__import__('hashlib').sha256(b'bob-key-456').hexdigest()}"]}}
""")


@pytest.fixture(scope="module")
def idp():
    server = IdP().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(upstream, keys, idp):
    from tests.support.processes import Gateway

    g = Gateway(auth_config(upstream.url, keys, idp.url)).start()
    yield g
    g.cleanup()


def echo_headers(r):
    assert r.status == 200, (r.status, r.body)
    return json.loads(r.body)["headers"]


def test_hs256_token_identifies_the_caller_upstream(gw):
    t = token(SECRET, scope="users:read users:write", tier="gold")
    h = echo_headers(get(gw.port, "/hs/x", t, "X-Consumer-Id: mallory\r\nX-Auth-Scopes: everything\r\n"))
    assert h["x-consumer-id"] == "alice"            # the client's own copy was removed
    assert h["x-consumer-tier"] == "gold"
    assert h["x-auth-scopes"] == "users:read users:write"


def test_tier_falls_back_to_the_consumers_and_scp_lists_work(gw):
    t = token(SECRET, scp=["users:read"])
    h = echo_headers(get(gw.port, "/hs/x", t))
    assert h["x-consumer-tier"] == "premium" and h["x-auth-scopes"] == "users:read"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_hmac_family(gw, alg):
    assert get(gw.port, "/hs/x", token(SECRET, alg)).status == 200


@pytest.mark.parametrize("name,alg", [("p256", "ES256"), ("p384", "ES384"), ("ed", "EdDSA"), ("rsa2", "PS256")])
def test_public_key_providers(gw, keys, name, alg):
    made, _ = keys
    assert get(gw.port, "/pems/x", token(made[name], alg)).status == 200


def test_rs_with_issuer_audience_and_leeway(gw, keys):
    made, _ = keys
    ok = token(made["rsa"], "RS256", iss="https://idp", aud="api")
    assert get(gw.port, "/rsa/x", ok).status == 200
    assert get(gw.port, "/rsa/x", token(made["rsa"], "RS512", iss="https://idp", aud=["other", "api"])).status == 200
    just_expired = token(made["rsa"], "RS256", ttl=-2, iss="https://idp", aud="api")
    assert get(gw.port, "/rsa/x", just_expired).status == 200      # within the 5 s leeway


def _reason(r):
    return r.getheader("www-authenticate")


@pytest.mark.parametrize("case", ["expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "no_exp",
                                  "bad_signature", "garbage", "issued_in_future"])
def test_each_failure_is_401_with_a_bearer_challenge(gw, keys, case):
    made, _ = keys
    now = int(time.time())
    k = made["rsa"]
    bad = {
        "expired": token(k, "RS256", ttl=-60, iss="https://idp", aud="api"),
        "not_yet_valid": token(k, "RS256", iss="https://idp", aud="api", nbf=now + 600),
        "wrong_issuer": token(k, "RS256", iss="https://evil", aud="api"),
        "wrong_audience": token(k, "RS256", iss="https://idp", aud="other"),
        "no_exp": jwt.encode({"sub": "alice", "iss": "https://idp", "aud": "api"}, k, algorithm="RS256"),
        "bad_signature": token(made["rsa2"], "RS256", iss="https://idp", aud="api"),
        "garbage": "not.a.token",
        "issued_in_future": token(k, "RS256", iss="https://idp", aud="api", iat=now + 3600),
    }[case]
    r = get(gw.port, "/rsa/x", bad)
    assert r.status == 401
    assert r.getheader("content-type") == "application/problem+json"
    assert _reason(r).startswith('Bearer realm="tollhouse", error="invalid_token"')


def test_missing_credentials_get_a_bare_challenge(gw):
    r = get(gw.port, "/hs/x")
    assert r.status == 401 and _reason(r) == 'Bearer realm="tollhouse"'


def _forge(header: dict, payload: dict, signature: bytes = b"") -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc(header)}.{enc(payload)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_casing_is_refused(gw, alg):
    forged = _forge({"alg": alg, "typ": "JWT"}, {"sub": "admin", "exp": int(time.time()) + 300})
    assert get(gw.port, "/hs/x", forged).status == 401
    assert get(gw.port, "/rsa/x", forged).status == 401


def test_rs_to_hs_confusion_is_refused(gw, keys):
    _, paths = keys
    public_pem = paths["rsa"].read_bytes()
    import hashlib
    import hmac
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"sub": "admin", "exp": int(time.time()) + 300, "iss": "https://idp", "aud": "api"}
    unsigned = _forge(header, payload).rsplit(".", 1)[0]
    sig = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    forged = unsigned + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    r = get(gw.port, "/rsa/x", forged)
    assert r.status == 401


def test_empty_signature_is_refused(gw, keys):
    made, _ = keys
    valid = token(made["rsa"], "RS256", iss="https://idp", aud="api")
    assert get(gw.port, "/rsa/x", valid.rsplit(".", 1)[0] + ".").status == 401


def test_psychic_ecdsa_signature_is_refused(gw):
    # CVE-2022-21449: r = s = 0 verified as valid in some ECDSA implementations.
    forged = _forge({"alg": "ES256", "typ": "JWT"}, {"sub": "admin", "exp": int(time.time()) + 300}, b"\x00" * 64)
    assert get(gw.port, "/pems/x", forged).status == 401


@pytest.mark.parametrize("kid", ["../../../../dev/null", "/etc/passwd", "' OR '1'='1", "", "x" * 5000])
def test_kid_tricks_find_no_key(gw, kid, keys):
    made, _ = keys
    t = token(made["rsa"], "RS256", headers={"kid": kid})
    assert get(gw.port, "/jwks/x", t).status == 401


def test_scopes_roles_and_optional(gw):
    only_read = token(SECRET, scope="users:read")
    r = get(gw.port, "/scoped/x", only_read)
    assert r.status == 403
    assert 'error="insufficient_scope"' in _reason(r) and 'scope="users:read users:write"' in _reason(r)
    assert get(gw.port, "/scoped/x", token(SECRET, scope="users:write users:read extra")).status == 200
    assert get(gw.port, "/admins/x", token(SECRET, roles=["viewer"])).status == 403
    assert get(gw.port, "/admins/x", token(SECRET, roles="viewer root")).status == 200
    anon = get(gw.port, "/maybe/x")
    assert "x-consumer-id" not in echo_headers(anon)
    assert echo_headers(get(gw.port, "/maybe/x", token(SECRET)))["x-consumer-id"] == "alice"
    assert get(gw.port, "/maybe/x", "bad.token.here").status == 401   # a bad credential is not anonymity


def test_two_authorization_headers_are_refused_and_never_forwarded(gw, upstream):
    """An unverified `alg: none` token first, a valid one second: a service reading the
    first copy would take the caller for `admin` (issue 16, defect 1)."""
    forged = _forge({"alg": "none", "typ": "JWT"}, {"sub": "admin", "exp": int(time.time()) + 300})
    before = len(upstream.requests)
    r = get(gw.port, "/hs/x", forged, f"Authorization: Bearer {token(SECRET)}\r\n")
    assert r.status == 400 and r.getheader("content-type") == "application/problem+json"
    assert b"Authorization" in r.body
    assert len(upstream.requests) == before


@pytest.mark.parametrize("duplicate", ["X-API-Key: alice-key-123\r\nX-API-Key: bob-key-456\r\n",
                                       "X-API-Key: wrong\r\nx-api-key: alice-key-123\r\n"])
def test_two_api_key_headers_are_refused_and_never_forwarded(gw, upstream, duplicate):
    before = len(upstream.requests)
    r = get(gw.port, "/keyed/x", headers=duplicate)
    assert r.status == 401 and r.getheader("content-type") == "application/problem+json"
    assert b"more than one x-api-key header" in r.body
    assert len(upstream.requests) == before


def test_two_api_key_parameters_are_refused(gw, upstream):
    before = len(upstream.requests)
    r = get(gw.port, "/keyed/x?apikey=bob-key-456&apikey=alice-key-123")
    assert r.status == 401 and b"more than one apikey parameter" in r.body
    assert len(upstream.requests) == before


@pytest.mark.parametrize("exp", ["numeric_string", "bool", "list"])
def test_claims_of_the_wrong_type_are_a_clean_401(gw, exp):
    """A validly signed token with `"exp": "1796024926"` was a silent 400 ("User
    callback error"): a TypeError inside the parser callback (issue 16, defect 9)."""
    now = int(time.time())
    value = {"numeric_string": str(now + 300), "bool": True, "list": [now + 300]}[exp]
    t = jwt.encode({"sub": "alice", "exp": value}, SECRET, algorithm="HS256")
    r = get(gw.port, "/hs/x", t)
    assert r.status == 401, (r.status, r.body)
    assert _reason(r).startswith('Bearer realm="tollhouse", error="invalid_token"')
    assert get(gw.port, "/hs/x", token(SECRET)).status == 200


@pytest.mark.parametrize("case", ["nbf_string", "nbf_bool", "iat_string", "iat_bool", "exp_true"])
def test_time_claims_that_are_not_numbers_are_invalid_claims(gw, case):
    """RFC 7519 §2: exp, nbf and iat are NumericDates. PyJWT reads them with int(), so a
    string or a bool used to pass (200), and "exp": true was "expired"."""
    now = int(time.time())
    name, value = {"nbf_string": ("nbf", str(now - 10)), "nbf_bool": ("nbf", True),
                   "iat_string": ("iat", str(now)), "iat_bool": ("iat", False), "exp_true": ("exp", True)}[case]
    claims = {"sub": "alice", "iat": now, "exp": now + 300, name: value}
    r = get(gw.port, "/hs/x", jwt.encode(claims, SECRET, algorithm="HS256"))
    assert r.status == 401, (r.status, r.body)
    assert json.loads(r.body)["detail"] == f"the token's {name} claim is not a number"
    text = gw.get_admin("/metrics")[1].decode()
    counted = [line for line in text.splitlines()
               if line.startswith('tollhouse_auth_failures_total{reason="invalid_claim",route="hs"}')]
    assert counted and float(counted[0].split()[-1]) >= 1, counted


def test_api_keys_in_header_or_query_are_not_forwarded(gw):
    r = get(gw.port, "/keyed/x?a=1", headers="X-API-Key: alice-key-123\r\n")
    h = echo_headers(r)
    assert h["x-consumer-id"] == "alice" and "x-api-key" not in h
    r = get(gw.port, "/keyed/x?apikey=bob-key-456&b=2")
    body = json.loads(r.body)
    assert body["headers"]["x-consumer-id"] == "bob" and body["target"] == "/keyed/x?b=2"
    assert get(gw.port, "/keyed/x", headers="X-API-Key: wrong\r\n").status == 401


def test_jwks_rotation_unknown_kid_throttling_and_idp_outage(upstream, keys, gateway_factory):
    made, _ = keys
    server = IdP().start()
    try:
        first = jwt.PyJWK.from_dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(made["rsa"].public_key())))
        jwk1 = {**first._jwk_data, "kid": "k1", "alg": "RS256", "use": "sig"}
        server.jwks = {"keys": [jwk1]}
        g = gateway_factory(auth_config(upstream.url, keys, server.url))
        t1 = token(made["rsa"], "RS256", headers={"kid": "k1"})
        wait_for(lambda: get(g.port, "/jwks/x", t1).status == 200)
        # Rotation: the IdP publishes k2; a token with k2 triggers one refetch.
        jwk2 = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(made["rsa2"].public_key())), "kid": "k2",
                "alg": "RS256", "use": "sig"}
        server.jwks = {"keys": [jwk1, jwk2]}
        time.sleep(5.1)  # past the refetch throttle of the start-up fetch
        t2 = token(made["rsa2"], "RS256", headers={"kid": "k2"})
        assert get(g.port, "/jwks/x", t2).status == 200
        fetches = server.jwks_fetches
        # Unknown kids do not refetch per request.
        for i in range(20):
            assert get(g.port, "/jwks/x", token(made["rsa"], "RS256", headers={"kid": f"nope{i}"})).status == 401
        assert server.jwks_fetches - fetches <= 1
        # An RS key announced for ES tokens is refused (family check).
        es = token(made["p256"], "ES256", headers={"kid": "k1"})
        assert get(g.port, "/jwks/x", es).status == 401
    finally:
        server.stop()
    # IdP outage: cached keys keep working.
    assert get(g.port, "/jwks/x", t1).status == 200
    assert get(g.port, "/jwks/x", t2).status == 200


def test_introspection_is_cached_and_uses_basic_auth(gw, idp):
    idp.active_tokens["opaque-1"] = {"sub": "carol", "scope": "orders:read", "exp": int(time.time()) + 300}
    before = idp.introspections
    for _ in range(3):
        h = echo_headers(get(gw.port, "/introspected/x", "opaque-1"))
        assert h["x-consumer-id"] == "carol"
    assert idp.introspections - before == 1
    assert idp.last_auth.startswith("Basic ")
    before = idp.introspections
    assert get(gw.port, "/introspected/x", "opaque-dead").status == 401
    assert get(gw.port, "/introspected/x", "opaque-dead").status == 401
    assert idp.introspections - before == 1          # inactive answers are cached briefly
    time.sleep(1.2)
    assert get(gw.port, "/introspected/x", "opaque-dead").status == 401
    assert idp.introspections - before == 2


def test_introspection_cache_never_outlives_exp(gw, idp):
    idp.active_tokens["opaque-short"] = {"sub": "dave", "exp": int(time.time()) + 1}
    assert get(gw.port, "/introspected/x", "opaque-short").status == 200
    del idp.active_tokens["opaque-short"]
    time.sleep(1.5)
    assert get(gw.port, "/introspected/x", "opaque-short").status == 401


def test_failures_are_counted_by_reason(gw):
    text = gw.get_admin("/metrics")[1].decode()
    assert 'tollhouse_auth_failures_total{reason="missing",route="hs"}' in text
    assert 'tollhouse_auth_failures_total{reason="expired",route="rsa"}' in text
    assert 'tollhouse_auth_failures_total{reason="insufficient_scope",route="scoped"}' in text


def test_consumers_and_tiers_feed_the_rate_limiter(upstream, gateway_factory):
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: tiered
    match: {prefix: /tiered}
    upstream: app
    auth: {providers: [dev], optional: true}
    rate_limits: [{tiered: true}]
""", extra=f"""auth:
  providers:
    dev: {{type: jwt, algorithms: [HS256], secret: "{SECRET}"}}
tiers:
  free: {{rate_limits: [{{limit: 2, window: 1m, key: consumer}}]}}
  premium: {{rate_limits: [{{limit: 4, window: 1m, key: consumer}}]}}
  default: {{rate_limits: [{{limit: 1, window: 1m, key: consumer}}]}}
consumers:
  - {{id: carol, tier: premium}}
"""))
    carol = token(SECRET, sub="carol")                 # tier from the consumer
    dan = token(SECRET, sub="dan", tier="free")        # tier from the claim
    erin = token(SECRET, sub="erin", tier="free")
    assert [get(g.port, "/tiered/x", carol).status for _ in range(5)] == [200] * 4 + [429]
    assert [get(g.port, "/tiered/x", dan).status for _ in range(3)] == [200, 200, 429]
    assert get(g.port, "/tiered/x", erin).status == 200     # counted per consumer, not per IP
    assert [get(g.port, "/tiered/x").status for _ in range(2)] == [200, 429]   # anonymous: default tier, by IP


def test_a_token_admitted_on_one_route_is_still_checked_on_another_and_expires(gw):
    # Routes remember the tokens they admitted (one lookup per request); that memo is per
    # route and never outlives the token.
    only_read = token(SECRET, scope="users:read", ttl=2)
    for _ in range(3):
        assert get(gw.port, "/hs/x", only_read).status == 200
        assert get(gw.port, "/scoped/x", only_read).status == 403
    time.sleep(2.2)
    assert get(gw.port, "/hs/x", only_read).status == 401
