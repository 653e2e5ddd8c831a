"""The HTTP/1.1 codecs: response framing towards the client, the request head towards an upstream."""
import pytest

from tests.unit.exchange.stand_ins import Connection

from tollhouse.exchange.http1 import HTTP1, HTTP1_UPSTREAM
from tollhouse.exchange.lifecycle import Exchange
from tollhouse.exchange.request import CHUNKED, NONE, RAW
from tollhouse.routing import RouteTarget


@pytest.fixture
def ex():
    e = Exchange(Connection(), None)
    e.status, e.request_id, e.version = 200, b"rid-1", "1.1"
    e.response_headers = [b"content-type: text/plain\r\n", b"content-length: 5\r\n"]
    return e


def test_a_response_of_known_length_is_relayed_raw(ex):
    HTTP1.frame_relayed(ex, b"5", False)
    assert ex.mode == RAW
    HTTP1.write_head(ex, b"")
    HTTP1.write_body(ex, b"hello")
    HTTP1.end_body(ex)
    assert b"".join(ex.conn.written) == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
                                         b"x-request-id: rid-1\r\n\r\nhello")


def test_a_length_that_changes_is_chunked_for_http11_and_close_delimited_for_http10(ex):
    HTTP1.frame_unknown_length(ex)
    assert ex.mode == CHUNKED and all(b"content-length" not in h for h in ex.response_headers)
    HTTP1.write_head(ex, b"")
    HTTP1.write_body(ex, b"hello")
    HTTP1.end_body(ex)
    out = b"".join(ex.conn.written)
    assert b"transfer-encoding: chunked\r\n" in out and out.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    ex10 = Exchange(Connection(), None)
    ex10.version, ex10.response_headers = "1.0", []
    HTTP1.frame_unknown_length(ex10)
    assert ex10.mode == RAW and not ex10.keep_alive


def test_the_upstream_request_head_carries_forwarding_headers_and_framing(ex):
    from tollhouse.upstream.pool import TargetPool

    class Settings:
        max_connections = 1

    ex.route = RouteTarget("r", 0, path="/x")
    ex.method, ex.query, ex.host = b"POST", b"?q=1", b"example.com"
    ex.headers = [b"accept: */*\r\n"]
    ex.content_length = 3
    target = TargetPool("http://backend:8080", 1, Settings(), None, HTTP1_UPSTREAM)
    parts = HTTP1_UPSTREAM.request_head(ex, target, b"POST", b"/x")
    HTTP1_UPSTREAM.frame_body(ex, parts, [b"abc"])
    assert b"".join(parts) == (b"POST /x?q=1 HTTP/1.1\r\nhost: backend:8080\r\naccept: */*\r\n"
                               b"x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
                               b"x-forwarded-host: example.com\r\nx-request-id: rid-1\r\n"
                               b"content-length: 3\r\n\r\nabc")
    assert ex.mode == NONE   # the response side is untouched


def test_head_validation_refuses_two_hosts_and_keeps_the_request_id(ex):
    class Limits:
        max_body_bytes = 0

    import asyncio

    from tollhouse.flow import WorkerCore

    loop = asyncio.new_event_loop()
    ex.worker = WorkerCore(loop)
    loop.close()
    ex.worker.next_request_id = lambda: b"made-1"
    ex.request_id, ex.host_count, ex.method, ex.raw_target = b"", 2, b"GET", b"/a?b"
    HTTP1.finalise_head(ex, Limits())
    assert ex.error.status == 400 and ex.request_id == b"made-1" and ex.path == b"/a" and not ex.keep_alive
