"""The real gateway between a real client socket and a real upstream server."""
import email.utils
import hashlib
import json
import os
import socket
import time

import pytest

from tests.integration.conftest import basic_config
from tests.support.client import RawClient, request
from tests.support.processes import RssWatch, refused_port
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def gw(upstream):
    from tests.support.processes import Gateway

    g = Gateway(basic_config(upstream.url, extra="limits: {max_body_bytes: 0}")).start()
    yield g
    g.cleanup()


def get(gw, target: str, headers: str = "", method: str = "GET"):
    return request(gw.port, f"{method} {target} HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n".encode(), method)


def echo(r):
    assert r.status == 200, (r.status, r.body)
    return json.loads(r.body)


def test_prefix_route_strips_prefix_and_keeps_query(gw):
    e = echo(get(gw, "/api/things/7?b=2&a=1"))
    assert e["target"] == "/things/7?b=2&a=1"


def test_templated_route_rewrites_path(gw):
    e = echo(get(gw, "/users/42"))
    assert e["target"] == "/v2/users/42"


def test_method_not_allowed_lists_allow_and_is_problem_json(gw):
    r = get(gw, "/users/42", method="DELETE")
    assert r.status == 405
    assert r.getheader("allow") == "GET, PUT"
    assert r.getheader("content-type") == "application/problem+json"
    body = json.loads(r.body)
    assert body["status"] == 405 and body["request_id"] == r.getheader("x-request-id")


@pytest.mark.parametrize("spelling", ["/public/../admin/x", "/%61dmin/x", "//admin/x", "/public/%2e%2e/admin/x",
                                      "/public/..;/admin/x", "/admin;jsessionid=1/x", "/./admin/./x"])
def test_path_spellings_reach_the_route_they_really_target_with_normal_path(gw, upstream, spelling):
    r = get(gw, spelling)
    e = echo(r)
    assert e["target"] == "/admin/x"
    # It was routed by the admin-area route, not "rest": the access log says so.


@pytest.mark.parametrize("bad", ["/a%2fb", "/a%5cb", "/a\\b", "/a%00", "/a%zz"])
def test_ambiguous_paths_are_refused(gw, bad):
    assert get(gw, bad).status == 400


def test_upstream_sees_forwarded_headers_and_request_id(gw):
    r = get(gw, "/echo", "X-Request-ID: abc-123\r\nX-Forwarded-For: 6.6.6.6\r\n")
    e = echo(r)
    h = e["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1"          # the untrusted client's own XFF is replaced
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "example.com"
    assert h["x-request-id"] == "abc-123" == r.getheader("x-request-id")
    assert h["host"].startswith("127.0.0.1:")


def test_insane_request_id_is_replaced(gw):
    r = get(gw, "/echo", "X-Request-ID: <script>\r\n")
    assert r.getheader("x-request-id") != "<script>"
    assert echo(r)["headers"]["x-request-id"] == r.getheader("x-request-id")


def test_hop_by_hop_and_identity_headers_are_removed(gw):
    e = echo(get(gw, "/echo", "Connection: x-private, keep-alive\r\nX-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                             "X-Consumer-Id: admin\r\nX-Consumer-Tier: premium\r\nX-Auth-Scopes: all\r\nX-Kept: 1\r\n"))
    h = e["headers"]
    for gone in ("x-private", "keep-alive", "te", "x-consumer-id", "x-consumer-tier", "x-auth-scopes"):
        assert gone not in h
    assert h["x-kept"] == "1"


def test_a_relayed_response_without_date_gets_the_gateways(gw):
    """RFC 9110 §6.6.1: a proxy adds Date to a response whose origin sent none (the test
    upstream sends none on /echo), from the worker's clock: one header, a current time."""
    r = get(gw, "/echo")
    dates = r.headers.get_all("date") or []
    assert len(dates) == 1, r.headers
    assert abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()) < 3


def test_an_upstreams_own_date_is_relayed_unchanged(gw):
    stamp = "Tue, 01 Dec 2026 10:00:00 GMT"
    r = get(gw, "/resource?date=" + stamp.replace(" ", "%20").replace(",", "%2C"))
    assert r.headers.get_all("date") == [stamp]


def test_an_upstreams_transfer_encoding_is_never_relayed_the_gateway_frames_anew(gw):
    """The upstream's chunked framing is undone and redone: the client sees one Transfer-Encoding,
    the gateway's."""
    r = get(gw, "/chunked?n=3")
    assert r.headers.get_all("transfer-encoding") == ["chunked"], r.headers
    assert r.body == b"chunk-0;chunk-1;chunk-2;"


def test_hop_by_hop_response_headers_are_removed(gw):
    r = get(gw, "/hop")
    assert r.getheader("x-secret") is None and r.getheader("keep-alive") is None
    assert r.getheader("x-kept") == "yes"


def test_keep_alive_and_pipelining_answer_in_order(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5)))
        targets = [json.loads(c.response().body)["target"] for _ in range(5)]
        assert targets == [f"/p{i}" for i in range(5)]
        c.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert json.loads(c.response().body)["target"] == "/after"
    finally:
        c.close()


def test_pipelined_slow_then_fast_keeps_order(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.response().body == b"slow"
        assert json.loads(c.response().body)["target"] == "/fast"
    finally:
        c.close()


def test_upstream_connections_are_reused(upstream, gateway_factory):
    u = Upstream().start()
    try:
        g = gateway_factory(basic_config(u.url))
        for _ in range(20):
            assert get(g, "/x").status == 200
        assert u.connections == 1
    finally:
        u.stop()


def test_dead_pooled_connection_is_retried_on_a_fresh_one(gateway_factory):
    u = Upstream().start()
    try:
        g = gateway_factory(basic_config(u.url))
        assert get(g, "/one").status == 200
        u.close_all()   # the pooled connection dies while idle
        for _ in range(3):
            assert get(g, "/two").status == 200
    finally:
        u.stop()


def test_head_204_and_304_have_no_body(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"HEAD /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response("HEAD")
        assert r.status == 200 and r.body == b""
        c.send(b"GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response()
        assert r.status == 204 and r.body == b""
        c.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")  # the connection is still in sync
        assert json.loads(c.response().body)["target"] == "/after"
    finally:
        c.close()


def test_chunked_upload_and_download(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = c.response()
        assert json.loads(r.body) == {"length": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()}
        c.send(b"GET /chunked?n=4 HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response()
        assert r.body == b"chunk-0;chunk-1;chunk-2;chunk-3;"
    finally:
        c.close()


def test_expect_100_continue(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.file.readline()
        assert interim.startswith(b"HTTP/1.1 100")
        assert c.file.readline() == b"\r\n"
        c.send(b"abcde")
        assert json.loads(c.response().body)["length"] == 5
    finally:
        c.close()


def test_refused_upstream_is_502(gateway_factory):
    g = gateway_factory(basic_config(f"http://127.0.0.1:{refused_port()}"))
    r = get(g, "/x")
    assert r.status == 502 and r.getheader("content-type") == "application/problem+json"


def test_slow_upstream_is_504_within_route_timeout(gw):
    t0 = time.monotonic()
    r = get(gw, "/slow?ms=2000")
    assert r.status == 504
    assert time.monotonic() - t0 < 1.5


def test_garbage_from_upstream_is_502(gw):
    assert get(gw, "/garbage").status == 502


def test_truncated_upstream_body_is_not_completed(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"GET /truncate HTTP/1.1\r\nHost: a\r\n\r\n")
        import http.client
        with pytest.raises(http.client.IncompleteRead):
            c.response()
    finally:
        c.close()


def test_close_delimited_upstream_body_is_rechunked(gw):
    c = RawClient(gw.port)
    try:
        c.send(b"GET /delimited HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response()
        assert r.body == b"all of this until close"
        assert r.getheader("transfer-encoding") == "chunked"
    finally:
        c.close()


def test_large_download_and_upload_stream_with_bounded_memory(gw):
    size = 256 * 1024 * 1024
    with RssWatch(gw.proc.pid) as rss:
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(f"GET /big?bytes={size} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        got = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while got < size:
            time.sleep(0)  # a slowish reader
            chunk = s.recv(1 << 16)
            assert chunk
            got += len(chunk)
        s.close()
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode())
        block = os.urandom(1 << 20)
        sha = hashlib.sha256()
        for _ in range(size // len(block)):
            s.sendall(block)
            sha.update(block)
        f = s.makefile("rb")
        from tests.support.client import _SockLike
        import http.client
        r = http.client.HTTPResponse(_SockLike(f))
        r.begin()
        assert json.loads(r.read()) == {"length": size, "sha256": sha.hexdigest()}
        s.close()
    assert rss.growth_kib < 16 * 1024, f"RSS grew by {rss.growth_kib // 1024} MiB"


def test_access_log_is_json_per_request(gw):
    get(gw, "/api/logged?x=1", "X-Request-ID: log-me\r\n")
    time.sleep(0.3)
    lines = [json.loads(line) for line in gw.stdout().splitlines() if "log-me" in line]
    assert lines, gw.stdout()[-500:]
    rec = lines[-1]
    assert rec["route"] == "api" and rec["status"] == 200 and rec["method"] == "GET"
    assert rec["path"] == "/api/logged" and rec["client_ip"] == "127.0.0.1"
    for field in ("time", "bytes", "duration_ms", "upstream", "consumer", "cache", "ratelimit"):
        assert field in rec


def test_conflicting_framing_from_upstream_is_502_and_the_connection_dropped(gw, upstream):
    before = upstream.connections
    assert get(gw, "/conflict").status == 502
    assert get(gw, "/after-conflict").status == 200
    assert upstream.connections > before     # the bad connection was not reused


def test_max_connections_queue_then_503(gateway_factory):
    import threading
    u = Upstream().start()
    try:
        g = gateway_factory(basic_config(u.url).replace("    connect_timeout: 1s", "    connect_timeout: 300ms\n    max_connections: 1"))  # noqa: E501 - a config line as a user writes it
        results = []
        slow = threading.Thread(target=lambda: results.append(get(g, "/api/slow?ms=1200").status))
        slow.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        queued = get(g, "/fast")
        assert queued.status == 503 and queued.getheader("retry-after") == "1"
        assert 0.25 < time.monotonic() - t0 < 1.0            # waited about connect_timeout, no longer
        slow.join()
        assert results == [200]
        done = threading.Thread(target=lambda: results.append(get(g, "/api/slow?ms=200").status))
        done.start()
        time.sleep(0.05)
        assert get(g, "/fast").status == 200                  # waits in the queue, then gets the connection
        done.join()
    finally:
        u.stop()
