"""Custom policies named in the config run with the built-ins' interface (docs/policies.md)."""
import json

from tests.integration.conftest import basic_config
from tests.support.client import RawClient, request
from tests.support.processes import wait_for

POLICIES = """
policies:
  audit: {use: "examples.policies:AuditPolicy", config: {tag: t-1, require: [X-Reason]}}
  visits: {use: "examples.policies:VisitCounter", config: {limit: 2}}
"""


def _routes():
    return """  - name: audited
    match: {prefix: /audited}
    upstream: app
    policies: [audit]
  - name: counted
    match: {prefix: /counted}
    upstream: app
    policies: [visits, audit]
"""


def get(g, target, headers=""):
    return request(g.port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())


def test_sync_policy_sets_headers_and_answers_locally(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes=_routes(), extra=POLICIES))
    r = get(g, "/audited/x", "X-Reason: testing\r\n")
    assert r.status == 200
    assert json.loads(r.body)["headers"]["x-audit"] == "t-1"
    assert r.getheader("x-audited") == "t-1"
    refused = get(g, "/audited/x")
    assert refused.status == 400 and b"X-Reason" in refused.body
    assert refused.getheader("x-audited") == "t-1"   # response hooks run on local answers too
    assert get(g, "/other").getheader("x-audited") is None   # only on routes that name it


def test_async_policy_awaits_the_store(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes=_routes(), extra=POLICIES))
    statuses = [get(g, "/counted", "X-Reason: r\r\n").status for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


def test_bad_policy_spec_is_a_config_error(gateway_factory, upstream, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "g.yaml"
    cfg.write_text(basic_config(upstream.url, extra="""policies:
  nope: "examples.policies:Missing"
  bad: {use: "examples.policies:AuditPolicy", config: {tagg: x}}
"""))
    from tests.support.processes import ROOT
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(cfg)], capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}/src:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert "policies.nope" in out.stderr and "has no class Missing" in out.stderr
    assert "policies.bad.config.tagg" in out.stderr


def test_a_bug_in_a_policy_is_a_logged_500_not_a_client_error(gateway_factory, upstream):
    """An exception raised inside httptools' callback used to read as the client's
    malformed request: 400 "User callback error", nothing logged (issue 16, defect 9)."""
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: buggy
    match: {prefix: /buggy}
    upstream: app
    policies: [bug]
""", extra='policies: {bug: "tests.support.policies:RaisesOnRequest"}\n'))
    r = get(g, "/buggy")
    assert r.status == 500 and r.getheader("content-type") == "application/problem+json"
    assert json.loads(r.body)["request_id"] == r.getheader("x-request-id")
    assert get(g, "/other").status == 200
    from tests.support.processes import wait_for
    wait_for(lambda: "TypeError" in g.stderr())
    assert "error while handling a request" in g.stderr()


def test_a_route_may_give_a_custom_policy_its_own_options(gateway_factory, upstream, tmp_path):
    routes = """  - name: own-options
    match: {prefix: /own}
    upstream: app
    policies: [{audit: {tag: route-own}}]
"""
    g = gateway_factory(basic_config(upstream.url, extra_routes=_routes() + routes, extra=POLICIES))
    r = get(g, "/own/x")   # the route's options: no X-Reason required
    assert r.status == 200 and json.loads(r.body)["headers"]["x-audit"] == "route-own"
    assert r.getheader("x-audited") == "route-own"
    assert json.loads(get(g, "/audited/x", "X-Reason: r\r\n").body)["headers"]["x-audit"] == "t-1"

    import subprocess
    import sys
    from tests.support.processes import ROOT

    cfg = tmp_path / "g.yaml"
    cfg.write_text(basic_config(upstream.url, extra_routes=routes.replace("tag: route-own", "tagg: x"),
                                extra=POLICIES))
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(cfg)], capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}/src:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert "routes[0].policies[0].audit.tagg" in out.stderr and "unknown key" in out.stderr


def test_a_policy_can_take_the_connection_over_after_an_upgrade(gateway_factory, upstream):
    """The hook the WebSocket relay needs: after a 101 the socket is the new protocol's,
    bytes sent with the head included; no further HTTP is parsed on it."""
    from tests.support.client import RawClient

    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: shout
    match: {prefix: /shout}
    upstream: app
    policies: [shout]
""", extra='policies: {shout: "tests.support.policies:UpgradeToShout"}\n'))
    c = RawClient(g.port)
    try:
        c.send(b"GET /shout HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\nearly, ")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += c.file.read(1)
        assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: shout" in head
        assert c.file.read(7) == b"EARLY, "
        c.send(b"GET / HTTP/1.1\r\n\r\n")   # not HTTP any more: it comes back shouted
        assert c.file.read(18) == b"GET / HTTP/1.1\r\n\r\n".upper()
    finally:
        c.close()
    assert get(g, "/shout").status == 200   # without an Upgrade the route proxies as usual
    wait_for(lambda: 'tollhouse_requests_total{method="GET",route="shout",status="101"} 1.0'
             in g.get_admin("/metrics")[1].decode())   # counted when the taken-over connection ended


def test_a_custom_policy_outcome_is_counted_like_the_built_ins(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: audited-outcome
    match: {prefix: /outcome}
    upstream: app
    policies: [counts]
""", extra='policies: {counts: "tests.support.policies:CountsItsOutcome"}\n'))
    assert get(g, "/outcome/x", "X-Flag: 1\r\n").getheader("x-audit-outcome") == "flagged"
    assert get(g, "/outcome/x").getheader("x-audit-outcome") == "clean"
    get(g, "/outcome/x")
    text = g.get_admin("/metrics")[1].decode()
    assert 'tollhouse_audit_results_total{result="flagged",route="audited-outcome"} 1.0' in text
    assert 'tollhouse_audit_results_total{result="clean",route="audited-outcome"} 2.0' in text


BODY_POLICIES = """
policies:
  redact: "examples.policies:Redact"
  inspect: "examples.policies:InspectBody"
  size: "examples.policies:BodySize"
limits: {max_body_bytes: 1MiB}
"""


def _body_routes():
    return """  - name: redacted
    match: {prefix: /resource}
    upstream: app
    compress: {min_bytes: 1}
    policies: [redact]
  - name: inspected
    match: {prefix: /upload}
    upstream: app
    policies: [inspect]
  - name: sized
    match: {path: /size}
    upstream: app
    policies: [size]
"""


def test_a_custom_body_filter_runs_before_compression(gateway_factory, upstream):
    """Body filters run in phase order: the custom one masks the plain body, compression
    (phase transform) compresses the result, and neither hides the other."""
    import gzip

    g = gateway_factory(basic_config(upstream.url, extra_routes=_body_routes(), extra=BODY_POLICIES))
    # The test upstream's /resource JSON carries what the request said in "language": the word to mask.
    plain = get(g, "/resource?bytes=3000", "Accept-Language: secret-secret\r\n")
    assert plain.status == 200 and plain.getheader("content-encoding") is None
    assert b"secret" not in plain.body and b"******-******" in plain.body
    zipped = get(g, "/resource?bytes=3000&chunked=1", "Accept-Language: secret-secret\r\nAccept-Encoding: gzip\r\n")
    assert zipped.status == 200 and zipped.getheader("content-encoding") == "gzip"
    body = gzip.decompress(zipped.body)
    assert b"secret" not in body and b"******-******" in body and len(body) == 3000


def test_a_body_reader_sees_the_request_body_and_may_refuse_it(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes=_body_routes(), extra=BODY_POLICIES))
    for body, status in ((b"harmless " * 1000, 200), (b"harmless " * 1000 + b"an attack", 403)):
        r = request(g.port, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert r.status == status, (r.status, r.body)
    assert json.loads(get(g, "/upload").body) == {"length": 0, "sha256": json.loads(get(g, "/upload").body)["sha256"]}


def test_a_terminal_policy_gets_the_whole_body_past_64_kib(gateway_factory, upstream):
    """Up to the route's body limit (here max_body_bytes, 1 MiB), not 64 KiB."""
    g = gateway_factory(basic_config(upstream.url, extra_routes=_body_routes(), extra=BODY_POLICIES))
    body = b"x" * (300 * 1024)
    r = request(g.port, b"POST /size HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert r.status == 200 and json.loads(r.body) == {"bytes": len(body)}
    # Past the limit as the body streams (chunked: no length to refuse it by up front): 413.
    c = RawClient(g.port)
    try:
        c.send(b"POST /size HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(17):
                c.send(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass   # the gateway answered and stopped reading while the rest was being sent
        assert c.response().status == 413
    finally:
        c.close()
