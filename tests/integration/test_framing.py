"""Request smuggling and limits (docs/contract.md §3): refuse, close, forward nothing."""
import json
import time

import pytest

from tests.integration.conftest import basic_config
from tests.support.client import RawClient
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def setup():
    from tests.support.processes import Gateway

    u = Upstream().start()
    g = Gateway(basic_config(u.url, extra="""limits:
  max_header_bytes: 2KiB
  max_headers: 20
  max_uri_bytes: 512
  max_body_bytes: 1KiB
  header_timeout: 500ms
  idle_timeout: 1s
""")).start()
    yield g, u
    g.cleanup()
    u.stop()


SMUGGLING = {
    "cl_and_te": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two_cls": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    "cl_list": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
    "te_not_chunked": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
    "te_gzip_chunked": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad_chunk_size": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_overflow": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nab\r\n0\r\n\r\n",
    "obs_fold": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "nul_in_value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "cr_in_value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "space_before_colon": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "no_host": b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two_hosts": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http2_version": b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
    "bad_method": b"G@T /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "negative_cl": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    # Host must be uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2).
    "host_userinfo": b"GET /x HTTP/1.1\r\nHost: a@b\r\n\r\n",
    "host_two_ports": b"GET /x HTTP/1.1\r\nHost: h:80:80\r\n\r\n",
    "host_space": b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host_slash": b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host_port_letters": b"GET /x HTTP/1.1\r\nHost: a:8o\r\n\r\n",
    "absolute_form_userinfo": b"GET http://user@a/x HTTP/1.1\r\nHost: a\r\n\r\n",
    # A singleton header sent twice: services that read the first copy would see
    # another value than the gateway's policies did.
    "two_authorizations": b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x.y.z\r\n"
                          b"authorization: Bearer a.b.c\r\n\r\n",
    "two_content_types": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                         b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
    "two_proxy_authorizations": b"GET /x HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic YTpi\r\n"
                                b"Proxy-Authorization: Basic Yzpk\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_framing_is_refused_closed_and_never_forwarded(setup, name):
    g, u = setup
    before = len(u.requests)
    c = RawClient(g.port)
    try:
        # A second request rides behind: it must never reach the upstream.
        c.send(SMUGGLING[name] + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.response()
        assert r.status in (400, 501, 505), (name, r.status)
        assert r.getheader("content-type") == "application/problem+json"
        assert r.getheader("connection") == "close"
        assert c.closed()
    finally:
        c.close()
    time.sleep(0.05)
    assert not any("/smuggled" in q["target"] for q in u.requests[before:])
    assert len(u.requests) == before


def test_body_over_limit_is_413(setup):
    g, u = setup
    c = RawClient(g.port)
    try:
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        assert c.response().status == 413
    finally:
        c.close()
    c = RawClient(g.port)
    try:  # chunked bodies are counted as they arrive
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024
               + b"\r\n400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n")
        assert c.response().status == 413
    finally:
        c.close()


def test_uri_too_long_is_414(setup):
    g, _ = setup
    c = RawClient(g.port)
    try:
        c.send(b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.response().status == 414
    finally:
        c.close()


def test_too_many_or_too_large_headers_is_431(setup):
    g, _ = setup
    for head in (b"".join(b"X-%d: 1\r\n" % i for i in range(30)), b"X-Big: " + b"b" * 3000 + b"\r\n"):
        c = RawClient(g.port)
        try:
            c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n")
            assert c.response().status == 431
        finally:
            c.close()


def test_slow_head_gets_408_and_close_while_real_clients_are_served(setup):
    g, _ = setup
    slow = [RawClient(g.port) for _ in range(200)]
    try:
        for s in slow:
            s.send(b"GET /x HTTP/1.1\r\nHo")
        # Real clients are served meanwhile.
        c = RawClient(g.port)
        c.send(b"GET /fine HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.response().status == 200
        c.close()
        time.sleep(1.0)
        for s in slow:
            assert s.response().status == 408
            assert s.closed(timeout=2)
    finally:
        for s in slow:
            s.close()


def test_idle_keep_alive_connection_is_closed(setup):
    g, _ = setup
    c = RawClient(g.port)
    try:
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.response().status == 200
        t0 = time.monotonic()
        assert c.closed(timeout=3)
        assert 0.7 < time.monotonic() - t0 < 2.5
    finally:
        c.close()


def test_upgrade_header_is_not_honoured_and_connection_stays_in_sync(setup):
    g, u = setup
    c = RawClient(g.port)
    try:
        c.send(b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
               b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        r1 = c.response()
        assert r1.status == 200
        assert "upgrade" not in r1.body.decode().lower()
        assert b"/next" in c.response().body
    finally:
        c.close()


def test_http10_client_gets_close_delimited_or_keepalive(setup):
    g, _ = setup
    c = RawClient(g.port)
    try:
        c.send(b"GET /chunked?n=2 HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.body == b"chunk-0;chunk-1;"
        assert c.closed()
    finally:
        c.close()


def test_connection_cap(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra="limits: {max_connections: 5}"))
    held = [RawClient(g.port) for _ in range(5)]
    try:
        time.sleep(0.2)
        extra = RawClient(g.port)
        assert extra.closed(timeout=2)
        extra.close()
        held[0].send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert held[0].response().status == 200
    finally:
        for h in held:
            h.close()


@pytest.mark.parametrize("host", [b"a", b"a:8080", b"a:", b"127.0.0.1:9", b"[::1]:80", b"xn--bcher-kva.example",
                                  b"a.b-c_d~e", b""])
def test_valid_host_forms_are_served(setup, host):
    g, _ = setup
    c = RawClient(g.port)
    try:
        c.send(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert c.response().status == 200, host
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/te-foo", "/te-gzip-chunked"])
def test_upstream_unknown_transfer_coding_is_502_with_valid_framing(setup, path):
    """RFC 9112 §6.3: a coding the client cannot be told about is never relayed
    (the client used to get chunked framing it could not parse)."""
    g, _ = setup
    c = RawClient(g.port)
    try:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        r = c.response()
        assert r.status == 502
        assert r.getheader("content-type") == "application/problem+json"
        assert b"Transfer-Encoding" in r.body
        # The connection is still in step: the next request is answered.
        c.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"/after" in c.response().body
    finally:
        c.close()


EARLY_REFUSALS = {
    "two_authorizations": b"GET /early/a?q=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n"
                          b"Authorization: Bearer y\r\n\r\n",
    "bad_host": b"GET /early/b HTTP/1.1\r\nHost: a@b\r\n\r\n",
    "two_hosts": b"GET /early/c HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(EARLY_REFUSALS))
def test_a_request_refused_before_routing_has_a_request_id_and_a_logged_path(setup, name):
    """The refusal carries X-Request-ID, and its access-log line the same id and the path as sent,
    so that a client's report of a 400 can be found in the logs."""
    g, _ = setup
    head = EARLY_REFUSALS[name]
    c = RawClient(g.port)
    try:
        c.send(head)
        r = c.response()
    finally:
        c.close()
    assert r.status == 400, (name, r.status)
    rid = r.getheader("x-request-id")
    assert rid, r.headers
    path = head.split(b" ")[1].split(b"?")[0].decode()
    deadline = time.time() + 3
    lines = []
    while not lines and time.time() < deadline:
        time.sleep(0.05)
        lines = [json.loads(line) for line in g.stdout().splitlines() if rid in line]
    assert lines, g.stdout()[-500:]
    assert lines[-1]["request_id"] == rid and lines[-1]["path"] == path and lines[-1]["status"] == 400
