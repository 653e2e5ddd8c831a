"""Browser logins (docs/auth.md, "Browser logins"): the gateway as an OpenID Connect
relying party of a real OpenID provider (the npm package oidc-provider), two gateway
instances on one real Redis. A scripted browser logs in through the provider's own
pages: the redirect with PKCE, the callback and its cookie, the session on the other
instance, a tampered state, token refresh, idle expiry, logout, and API clients on
the same route."""
import json
import subprocess
import time
import urllib.parse

import pytest

from tests.support.openid import Browser, OpenIdProvider, available, location, set_cookies
from tests.support.processes import free_port, wait_for

pytestmark = pytest.mark.skipif(not available(), reason="needs node and oidc-provider (make test installs it)")

ACCESS_TTL = 6   # seconds: refreshed when a third of it is left

CONFIG = """
store: {store}
access_log: true
consumers:
  - {{id: robot, api_keys: [robot-key], scopes: [email]}}
auth:
  providers:
    sso:
      type: oidc
      issuer: {issuer}
      client_id: gateway
      client_secret: gateway-secret
      scopes: [openid, email]
      session: {{cookie: th_session, ttl: 1h, idle: {idle}}}
    keys: {{type: api_key, header: X-API-Key}}
upstreams:
  app: {{targets: ["{upstream}"]}}
routes:
  - name: app
    match: {{prefix: /app}}
    upstream: app
    auth: {{providers: [sso, keys]}}
"""


@pytest.fixture(scope="module")
def setup(upstream, shared_redis):
    """The provider, two instances (a, b) on one Redis and a third (idle) whose sessions idle out in 2s."""
    from tests.support.processes import Gateway

    provider = OpenIdProvider(free_port())
    gateways = [Gateway(CONFIG.format(store=shared_redis.url, issuer=provider.issuer, idle=idle, upstream=upstream.url))
                for idle in ("30m", "30m", "2s")]
    origins = [f"http://127.0.0.1:{g.port}" for g in gateways]
    provider.start([o + "/auth/callback" for o in origins], [o + "/" for o in origins], access_ttl=ACCESS_TTL)
    try:
        for g in gateways:
            g.start()
        yield provider, gateways
    finally:
        for g in gateways:
            g.cleanup()
        provider.stop()


def host(g):
    return f"127.0.0.1:{g.port}"


def login(browser, g, path="/app/page?x=1", who="alice"):
    """A navigation, the provider's pages, the callback: the callback's answer."""
    status, headers, _ = browser.request(f"http://{host(g)}{path}")
    assert status == 302
    back = browser.follow_provider(location(headers), who)
    assert back.startswith(f"http://{host(g)}/auth/callback?")
    return browser.request(back)


def test_a_navigation_is_sent_to_the_provider_with_pkce(setup):
    provider, (a, _, _) = setup
    browser = Browser()
    status, headers, _ = browser.request(f"http://{host(a)}/app/page")
    assert status == 302
    url = urllib.parse.urlsplit(location(headers))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}" == provider.issuer and url.path == "/auth"
    assert query["response_type"] == "code" and query["client_id"] == "gateway"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == f"http://{host(a)}/auth/callback" and query["scope"] == "openid email"
    assert query["state"] and query["nonce"] and query["state"] != query["nonce"]
    # The state is bound to this browser by a cookie only the callback sees.
    state_cookie = [c for c in set_cookies(headers) if c.startswith("th_session_state=")][0]
    assert "Path=/auth/callback" in state_cookie and "HttpOnly" in state_cookie


def test_the_callback_makes_a_session_cookie_and_returns_to_the_page(setup, upstream):
    provider, (a, _, _) = setup
    browser = Browser()
    status, headers, _ = login(browser, a)
    assert status == 302 and location(headers) == "/app/page?x=1"
    cookie = [c for c in set_cookies(headers) if c.startswith("th_session=")][0]
    attributes = {part.strip().split("=")[0] for part in cookie.split(";")}
    assert {"Secure", "HttpOnly", "SameSite"} <= attributes and "SameSite=Lax" in cookie
    session_id = browser.cookie(host(a), "th_session")
    assert len(session_id) >= 40 and "." not in session_id   # a random id, not a token
    status, _, _ = browser.request(f"http://{host(a)}/app/page?x=1")
    assert status == 200
    seen = upstream.requests[-1]["headers"]
    assert seen["x-consumer-id"] == "alice" and seen["x-forwarded-access-token"]
    assert "authorization_code" in [r["token_request"] for r in provider.token_requests()]


def test_the_session_works_on_the_other_instance_and_after_a_restart(setup, upstream):
    _, (a, b, _) = setup
    browser = Browser()
    login(browser, a, who="bob")
    session_id = browser.cookie(host(a), "th_session")
    status, _, _ = Browser().request(f"http://{host(b)}/app/x", headers={"Cookie": f"th_session={session_id}"})
    assert status == 200 and upstream.requests[-1]["headers"]["x-consumer-id"] == "bob"
    # Sessions live in Redis: they survive a restart of the instance.
    b.stop()
    b.start()
    status, _, _ = Browser().request(f"http://{host(b)}/app/y", headers={"Cookie": f"th_session={session_id}"})
    assert status == 200 and upstream.requests[-1]["headers"]["x-consumer-id"] == "bob"


def test_a_tampered_state_gets_no_session(setup):
    _, (a, _, _) = setup
    browser = Browser()
    status, headers, _ = browser.request(f"http://{host(a)}/app/page")
    back = browser.follow_provider(location(headers), "mallory")
    parts = urllib.parse.urlsplit(back)
    query = dict(urllib.parse.parse_qsl(parts.query))
    tampered = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode({**query, "state": "forged"})))
    status, headers, body = browser.request(tampered)
    assert 400 <= status < 500 and not any(c.startswith("th_session=") and "Max-Age=0" not in c
                                           for c in set_cookies(headers))
    assert b"state" in body
    # The genuine callback from another browser (no state cookie) is refused too.
    status, headers, _ = Browser().request(back)
    assert 400 <= status < 500 and not [c for c in set_cookies(headers) if c.startswith("th_session=")]


def test_tokens_are_refreshed_before_they_expire(setup, upstream):
    provider, (a, _, _) = setup
    browser = Browser()
    login(browser, a, who="carol")
    browser.request(f"http://{host(a)}/app/1")
    first = upstream.requests[-1]["headers"]["x-forwarded-access-token"]
    refreshes = len([r for r in provider.token_requests() if r["token_request"] == "refresh_token"])
    time.sleep(ACCESS_TTL * 2 / 3 + 0.5)   # less than a third of the token's life left
    assert browser.request(f"http://{host(a)}/app/2")[0] == 200
    wait_for(lambda: len([r for r in provider.token_requests() if r["token_request"] == "refresh_token"]) > refreshes,
             timeout=5)
    time.sleep(ACCESS_TTL / 3 + 0.5)   # past the first token's expiry
    status, _, _ = browser.request(f"http://{host(a)}/app/3")
    assert status == 200
    assert upstream.requests[-1]["headers"]["x-forwarded-access-token"] != first


def test_a_session_idles_out(setup):
    _, (_, _, idle) = setup
    browser = Browser()
    login(browser, idle, who="dave")
    assert browser.request(f"http://{host(idle)}/app/1")[0] == 200
    time.sleep(2.5)
    status, headers, _ = browser.request(f"http://{host(idle)}/app/1")
    assert status == 302 and "/auth?" in location(headers)


def test_logout_ends_the_session_everywhere_and_logs_out_at_the_provider(setup):
    provider, (a, b, _) = setup
    browser = Browser()
    login(browser, a, who="erin")
    session_id = browser.cookie(host(a), "th_session")
    assert Browser().request(f"http://{host(b)}/app/x", headers={"Cookie": f"th_session={session_id}"})[0] == 200
    status, headers, _ = browser.request(f"http://{host(a)}/auth/logout")
    assert status == 302
    end = urllib.parse.urlsplit(location(headers))
    query = dict(urllib.parse.parse_qsl(end.query))
    assert f"{end.scheme}://{end.netloc}{end.path}" == provider.issuer + "/session/end"
    assert query["post_logout_redirect_uri"] == f"http://{host(a)}/" and query["id_token_hint"].count(".") == 2
    assert any(c.startswith("th_session=;") and "Max-Age=0" in c for c in set_cookies(headers))
    # The provider takes the request (its confirmation page).
    assert browser.request(location(headers))[0] == 200
    for g in (a, b):
        status, headers, _ = Browser().request(f"http://{host(g)}/app/x", headers={"Cookie": f"th_session={session_id}"})
        assert status == 302 and "/auth?" in location(headers)


def test_api_clients_on_the_same_route_get_401_or_use_their_credential(setup, upstream):
    _, (a, _, _) = setup
    client = Browser()
    status, headers, body = client.request(f"http://{host(a)}/app/data", headers={"Accept": "application/json"})
    assert status == 401 and json.loads(body)["status"] == 401
    status, _, _ = client.request(f"http://{host(a)}/app/data", headers={"Accept": "application/json",
                                                                        "X-API-Key": "robot-key"})
    assert status == 200 and upstream.requests[-1]["headers"]["x-consumer-id"] == "robot"
    # A client-sent access token header never reaches the upstream.
    client.request(f"http://{host(a)}/app/data", headers={"X-API-Key": "robot-key",
                                                         "X-Forwarded-Access-Token": "forged"})
    assert "x-forwarded-access-token" not in upstream.requests[-1]["headers"]


def test_an_oidc_config_is_checked(tmp_path, upstream):
    import os
    import sys

    from tests.support.processes import ROOT

    config = tmp_path / "g.yaml"
    config.write_text(CONFIG.format(store="memory", issuer="http://127.0.0.1:1", idle="30m", upstream=upstream.url)
                      .replace("scopes: [openid, email]", "scopes: [email]"))
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(config)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    assert out.returncode != 0 and "auth.providers.sso.scopes" in out.stdout + out.stderr
