"""Traffic policies through the real gateway: ip, cors, request, compress, headers, regex rewrite."""
import gzip
import json
import socket
import time
import zlib

import brotli
import pytest

from tests.integration.conftest import basic_config
from tests.support.client import request
from tests.support.processes import RssWatch


def route(name: str, prefix: str, body: str, extra_match: str = "") -> str:
    return f"""  - name: {name}
    match: {{prefix: {prefix}{extra_match}}}
    upstream: app
{body}
"""


def get(port, target, headers="", method="GET", body=b""):
    head = f"{method} {target} HTTP/1.1\r\nHost: a\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return request(port, head.encode() + b"\r\n" + body, method=method)


def echoed(r) -> dict:
    return json.loads(r.body)


# --- ip --------------------------------------------------------------------------------------

def test_ip_allow_deny_on_the_real_client_address(gateway_factory, upstream):
    many = ", ".join(f"172.{i // 250}.{i % 250}.0/24" for i in range(2000))   # lookups stay cheap
    cfg = basic_config(upstream.url, extra_routes=route("guarded", "/guarded", f"""    ip:
      allow: [10.0.0.0/8, 127.0.0.1/32, 2001:db8::/32, {many}]
      deny: [10.6.6.6/32, 127.0.0.1/32]"""))
    g = gateway_factory(cfg)
    r = get(g.port, "/guarded/x")   # the peer 127.0.0.1 is denied (deny wins over allow)
    assert r.status == 403 and r.getheader("content-type") == "application/problem+json"
    assert len(upstream.requests) == 0 or "/guarded" not in upstream.requests[-1]["target"]
    assert get(g.port, "/other").status == 200


def test_ip_rules_follow_trusted_proxies_and_the_global_list(gateway_factory, upstream):
    # 127.0.0.1 is a trusted proxy here: the first untrusted X-Forwarded-For hop is the client.
    cfg = basic_config(upstream.url, extra="ip: {deny: [192.0.2.0/24]}",
                       extra_routes=route("guarded", "/guarded", "    ip: {allow: [10.1.0.0/16, 198.51.100.7]}")
                       ).replace("trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [127.0.0.1]")
    g = gateway_factory(cfg)
    assert get(g.port, "/guarded/x", "X-Forwarded-For: 198.51.100.7\r\n").status == 200
    assert get(g.port, "/guarded/x", "X-Forwarded-For: 198.51.100.8\r\n").status == 403
    # A spoofed hop before an untrusted one does not help: the right-most untrusted hop counts.
    assert get(g.port, "/guarded/x", "X-Forwarded-For: 10.1.2.3, 198.51.100.8\r\n").status == 403
    assert get(g.port, "/guarded/x", "X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n").status == 200
    # The global deny applies to every route.
    assert get(g.port, "/anything", "X-Forwarded-For: 192.0.2.44\r\n").status == 403
    assert get(g.port, "/anything", "X-Forwarded-For: 203.0.113.9\r\n").status == 200


# --- cors ------------------------------------------------------------------------------------

CORS = """    cors:
      origins: [https://app.example, "https://*.example.org"]
      methods: [GET, PUT]
      headers: [Authorization, X-Trace]
      expose_headers: [X-Total]
      credentials: true
      max_age: 10m"""


def test_cors_preflight_is_answered_by_the_gateway(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes=route("cors", "/cors", CORS)))
    seen = len(upstream.requests)
    r = get(g.port, "/cors/x", "Origin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\n"
                               "Access-Control-Request-Headers: authorization, x-trace\r\n", method="OPTIONS")
    assert r.status == 204
    assert r.getheader("access-control-allow-origin") == "https://app.example"
    assert r.getheader("access-control-allow-methods") == "GET, PUT"
    assert r.getheader("access-control-allow-headers") == "Authorization, X-Trace"
    assert r.getheader("access-control-allow-credentials") == "true"
    assert r.getheader("access-control-max-age") == "600"
    assert "Origin" in r.getheader("vary")
    assert len(upstream.requests) == seen   # never reached the upstream
    sub = get(g.port, "/cors/x", "Origin: https://a.b.example.org\r\nAccess-Control-Request-Method: GET\r\n",
              method="OPTIONS")
    assert sub.status == 204 and sub.getheader("access-control-allow-origin") == "https://a.b.example.org"


@pytest.mark.parametrize("headers", [
    "Origin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n",
    "Origin: https://example.org.evil.example\r\nAccess-Control-Request-Method: GET\r\n",
    "Origin: null\r\nAccess-Control-Request-Method: GET\r\n",
    "Origin: https://app.example\r\nAccess-Control-Request-Method: DELETE\r\n",
    "Origin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-other\r\n",
])
def test_cors_preflight_refusals(gateway_factory, upstream, headers):
    g = gateway_factory(basic_config(upstream.url, extra_routes=route("cors", "/cors", CORS)))
    r = get(g.port, "/cors/x", headers, method="OPTIONS")
    assert r.status == 403 and r.getheader("access-control-allow-origin") in (None, "https://app.example")
    assert r.getheader("access-control-allow-methods") is None


def test_cors_actual_requests_get_the_origin_never_a_wildcard_with_credentials(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra_routes=route("cors", "/cors", CORS)))
    r = get(g.port, "/cors/x", "Origin: https://app.example\r\n")
    assert r.status == 200 and r.getheader("access-control-allow-origin") == "https://app.example"
    assert r.getheader("access-control-allow-credentials") == "true"
    assert r.getheader("access-control-expose-headers") == "X-Total"
    assert "Origin" in r.getheader("vary")
    other = get(g.port, "/cors/x", "Origin: https://evil.example\r\n")
    assert other.status == 200 and other.getheader("access-control-allow-origin") is None
    assert "Origin" in other.getheader("vary")
    # A plain OPTIONS (no Access-Control-Request-Method) is the upstream's.
    assert echoed(get(g.port, "/cors/x", "Origin: https://app.example\r\n", method="OPTIONS"))["method"] == "OPTIONS"


def test_cors_wildcard_with_credentials_is_a_config_error(gateway_factory, upstream):
    from tollhouse.config import load_text

    _, errors = load_text(basic_config(upstream.url, extra_routes=route(
        "cors", "/cors", "    cors: {origins: ['*'], credentials: true}")))
    assert any("cors.credentials" in str(e) for e in errors)


# --- request ---------------------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["name"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"type": "string"}}}}


@pytest.fixture
def validated(gateway_factory, upstream, tmp_path):
    schema = tmp_path / "user.json"
    schema.write_text(json.dumps(SCHEMA))
    return gateway_factory(basic_config(upstream.url, extra_routes=route("users", "/users-in", f"""    request:
      max_body_bytes: 64KiB
      content_types: [application/json]
      json_schema: {schema}""")))


def test_valid_json_reaches_the_upstream_unchanged(validated, upstream):
    body = b'{"name": "Ada",   "age": 36, "tags": ["x"]}'
    r = get(validated.port, "/users-in", "Content-Type: application/json; charset=utf-8\r\n", "POST", body)
    assert r.status == 200 and echoed(r)["body_len"] == len(body)
    # Chunked, in pieces: buffered for validation, then forwarded byte for byte.
    s = socket.create_connection(("127.0.0.1", validated.port))
    s.sendall(b"POST /users-in HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    for piece in (body[:10], body[10:]):
        time.sleep(0.05)
        s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    s.sendall(b"0\r\n\r\n")
    s.settimeout(5)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1]["body_len"] == len(body) and upstream.requests[-1]["target"] == "/users-in"


def test_schema_failures_list_every_failing_path(validated):
    r = get(validated.port, "/users-in", "Content-Type: application/json\r\n", "POST",
            b'{"age": -1, "tags": [1, "ok", 2], "extra": true}')
    assert r.status == 400 and r.getheader("content-type") == "application/problem+json"
    paths = {e["path"] for e in json.loads(r.body)["errors"]}
    assert {"/", "/age", "/tags/0", "/tags/2"} <= paths


def test_malformed_json_wrong_type_and_large_bodies(validated, upstream):
    assert get(validated.port, "/users-in", "Content-Type: application/json\r\n", "POST", b'{"name": ').status == 400
    assert get(validated.port, "/users-in", "Content-Type: text/plain\r\n", "POST", b"hi").status == 415
    assert get(validated.port, "/users-in", "", "POST", b"hi").status == 415
    big = b'{"name": "' + b"x" * 70000 + b'"}'
    assert get(validated.port, "/users-in", "Content-Type: application/json\r\n", "POST", big).status == 413
    # Chunked and too large: refused while it streams.
    s = socket.create_connection(("127.0.0.1", validated.port))
    s.sendall(b"POST /users-in HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"x" * 16384
    try:
        for _ in range(8):
            s.sendall(b"%x\r\n%s\r\n" % (len(block), block))
    except OSError:
        pass
    s.settimeout(5)
    assert s.recv(100).startswith(b"HTTP/1.1 413")
    s.close()
    assert get(validated.port, "/users-in", method="GET").status == 200   # no body: nothing to validate


# --- compress --------------------------------------------------------------------------------

def compressing(upstream, spec="{min_bytes: 1KiB}"):
    return basic_config(upstream.url, extra_routes=route("packed", "/resource", f"    compress: {spec}")
                        + route("packed-big", "/big", f"    compress: {spec}"))


@pytest.mark.parametrize("accept, coding", [
    ("gzip", "gzip"), ("br", "br"), ("gzip, br", "br"), ("br;q=0.5, gzip;q=0.9", "gzip"),
    ("*", "br"), ("gzip;q=0, br;q=0", None), ("identity", None), ("", None),
])
def test_compression_is_negotiated(gateway_factory, upstream, accept, coding):
    g = gateway_factory(compressing(upstream))
    r = get(g.port, "/resource?bytes=5000", f"Accept-Encoding: {accept}\r\n" if accept else "")
    assert r.getheader("content-encoding") == coding
    assert "Accept-Encoding" in r.getheader("vary")
    body = r.body
    if coding == "gzip":
        body = gzip.decompress(body)
    elif coding == "br":
        body = brotli.decompress(body)
    assert len(body) == 5000 and json.loads(body.rstrip())["serial"] >= 1
    if coding:
        assert r.getheader("transfer-encoding") == "chunked" and r.getheader("content-length") is None


def test_small_already_encoded_and_incompressible_responses_pass_unchanged(gateway_factory, upstream):
    g = gateway_factory(compressing(upstream))
    assert get(g.port, "/resource?bytes=500", "Accept-Encoding: gzip\r\n").getheader("content-encoding") is None
    assert get(g.port, "/big?bytes=5000&ctype=image/png", "Accept-Encoding: gzip\r\n").getheader(
        "content-encoding") is None
    r = get(g.port, "/resource?bytes=5000&cc=no-transform", "Accept-Encoding: gzip\r\n")
    assert r.getheader("content-encoding") is None
    r = get(g.port, "/resource?bytes=5000&etag=%22v1%22", "Accept-Encoding: gzip\r\n")
    assert r.getheader("etag") == 'W/"v1"'


def test_compression_streams_a_large_response_chunk_by_chunk(gateway_factory, upstream):
    g = gateway_factory(compressing(upstream, "true"))
    size = 64 * 1024 * 1024
    with RssWatch(g.proc.pid) as rss:
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(f"GET /big?bytes={size}&ctype=text/plain HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    # De-chunk, then inflate.
    raw, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        n = int(body[pos:end], 16)
        if n == 0:
            break
        raw += body[end + 2:end + 2 + n]
        pos = end + 2 + n + 2
    assert len(zlib.decompress(raw, 31)) == size
    assert rss.growth_kib < 16 * 1024, f"RSS grew by {rss.growth_kib // 1024} MiB"


def test_gateway_answers_and_cache_hits_are_compressed_too(gateway_factory, upstream):
    cfg = basic_config(upstream.url, extra_routes=route("packed", "/resource", """    compress: {min_bytes: 100}
    cache: {ttl: 1m}"""))
    g = gateway_factory(cfg)
    get(g.port, "/resource?bytes=3000&z=1")
    hit = get(g.port, "/resource?bytes=3000&z=1", "Accept-Encoding: gzip\r\n")
    assert hit.getheader("x-cache-status") == "HIT" and hit.getheader("content-encoding") == "gzip"
    assert len(gzip.decompress(hit.body)) == 3000
    assert int(hit.getheader("content-length")) == len(hit.body)
    plain = get(g.port, "/resource?bytes=3000&z=1")
    assert plain.getheader("content-encoding") is None and len(plain.body) == 3000


# --- headers and rewrite -----------------------------------------------------------------

def test_header_rewriting_with_placeholders(gateway_factory, upstream):
    extra = """auth:
  providers:
    keys: {type: api_key, header: X-API-Key}
consumers:
  - {id: alice, api_keys: [alice-key]}
"""
    cfg = basic_config(upstream.url, extra=extra, extra_routes=route("hdr", "/hdr", """\
    auth: {providers: [keys], optional: true}
    headers:
      request:
        set: {X-Env: prod, X-Caller: "caller={consumer}", X-Rid: "{request_id}", X-Ip: "{client_ip}"}
        add: {X-Extra: one}
        remove: [Cookie]
      response:
        set: {X-Served-By: tollhouse}
        remove: [Content-Type]"""))
    g = gateway_factory(cfg)
    r = get(g.port, "/hdr/x", "X-API-Key: alice-key\r\nCookie: secret=1\r\nX-Env: dev\r\nX-Extra: zero\r\n"
                              "X-Request-ID: rid-42\r\n")
    headers = echoed(r)["headers"]
    assert headers["x-env"] == "prod" and headers["x-caller"] == "caller=alice"
    assert headers["x-rid"] == "rid-42" and headers["x-ip"] == "127.0.0.1"
    assert "cookie" not in headers
    extras = [v for n, v in upstream.requests[-1]["header_list"] if n == "x-extra"]
    assert extras == ["zero", "one"]
    assert r.getheader("x-served-by") == "tollhouse" and r.getheader("content-type") is None
    anonymous = echoed(get(g.port, "/hdr/x"))["headers"]
    assert anonymous["x-caller"] == "caller="


def test_regex_rewrite_with_captures(gateway_factory, upstream):
    cfg = basic_config(upstream.url, extra_routes=route("legacy", "/legacy", """    rewrite: {regex: "^/legacy/(?P<kind>[a-z]+)/([0-9]+)$", to: "/v2/{kind}/item-{2}"}"""))  # noqa: E501 - a config line as a user writes it
    g = gateway_factory(cfg)
    assert echoed(get(g.port, "/legacy/books/42?x=1"))["target"] == "/v2/books/item-42?x=1"
    assert echoed(get(g.port, "/legacy/other"))["target"] == "/legacy/other"   # no match: unchanged


def test_a_stalled_body_waiting_for_validation_gets_408(gateway_factory, upstream, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    cfg = basic_config(upstream.url, extra="limits: {header_timeout: 500ms}", extra_routes=route(
        "users", "/users-in", f"    request: {{json_schema: {schema}}}"))
    g = gateway_factory(cfg)
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"POST /users-in HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
              b'{"name": ')
    s.settimeout(5)
    started = time.monotonic()
    assert s.recv(200).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 3
    s.close()


def test_the_debug_header_explains_a_request_only_with_the_right_token(gateway_factory, upstream):
    """X-Tollhouse-Debug: <debug.token> -> Server-Timing and X-Tollhouse-Explain; the header
    itself never reaches the upstream, and a wrong token changes nothing."""
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: explained
    match: {prefix: /explained}
    upstream: app
    rate_limits: [{limit: 100, window: 1m}]
    cache: {ttl: 30s}
""", extra="debug: {token: s3cret-debug}\n"))

    def get(path, headers=""):
        return request(g.port, f"GET {path} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())

    r = get("/explained/x", "X-Tollhouse-Debug: s3cret-debug\r\n")
    assert r.status == 200
    timing = r.getheader("server-timing")
    assert "ratelimit;dur=" in timing and "cache;dur=" in timing and "upstream;dur=" in timing
    explain = r.getheader("x-tollhouse-explain")
    assert explain.startswith("route=explained; ") and "RateLimitPolicy=pass" in explain
    assert "ratelimit=allowed" in explain and "cache=MISS" in explain and f"targets={upstream.url}=200" in explain
    assert "x-tollhouse-debug" not in json.loads(r.body)["headers"]
    hit = get("/explained/x", "X-Tollhouse-Debug: s3cret-debug\r\n")
    assert "cache=HIT" in hit.getheader("x-tollhouse-explain") and "CachePolicy=200" in hit.getheader("x-tollhouse-explain")
    for headers in ("X-Tollhouse-Debug: wrong\r\n", ""):
        plain = get("/api/y", headers)
        assert plain.getheader("server-timing") is None and plain.getheader("x-tollhouse-explain") is None
        assert "x-tollhouse-debug" not in json.loads(plain.body)["headers"]


def test_without_a_debug_token_the_debug_header_is_dropped(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url))
    r = request(g.port, b"GET /api/z HTTP/1.1\r\nHost: a\r\nX-Tollhouse-Debug: anything\r\n\r\n")
    assert r.status == 200 and r.getheader("x-tollhouse-explain") is None
    assert "x-tollhouse-debug" not in json.loads(r.body)["headers"]
