"""The client protocol fed raw bytes, with a transport that records what it is given."""
import asyncio
import re

import pytest

from tollhouse.config import load_text
from tollhouse.flow import WorkerCore
from tollhouse.observability.metrics import Stats
from tollhouse.server.protocol import ClientConnection
from tollhouse.state import build_state
from tollhouse.store import MemoryStore

CONFIG = """
upstreams: {u: {targets: ["http://127.0.0.1:1"]}}
routes:
  - {name: items, match: {path: /items, methods: [GET]}, upstream: u}
limits: {max_headers: 5, max_uri_bytes: 64}
"""


class RecordingTransport(asyncio.Transport):
    """`out` is what was written once the event loop has finished its current
    batch of callbacks (the connection gathers writes until then)."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop
        self.written = bytearray()
        self.closed = False
        self.reading = True

    @property
    def out(self) -> bytearray:
        self.loop.run_until_complete(asyncio.sleep(0))   # one loop iteration: the outbox is flushed
        return self.written

    def write(self, data):
        self.written += data

    def writelines(self, parts):
        for p in parts:
            self.written += p

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


class FakeWorker(WorkerCore):
    """Only what the protocol touches; the state is built from a real config."""

    def __init__(self):
        super().__init__(asyncio.new_event_loop())
        config, errors = load_text(CONFIG)
        assert not errors
        self.stats = Stats()
        self.state = build_state(config, self.loop, self.stats, MemoryStore())
        self.access_log = None
        self.date_line = b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        n = iter(range(1, 10**6))
        self.next_request_id = lambda: b"rid-%d" % next(n)


@pytest.fixture
def conn():
    worker = FakeWorker()
    c = ClientConnection(worker, b"http")
    t = RecordingTransport(worker.loop)
    c.connection_made(t)
    yield c, t
    worker.loop.close()


def statuses(out: bytes):
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


def test_local_answers_to_pipelined_requests_come_in_order(conn):
    c, t = conn
    c.data_received(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\nDELETE /items HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /nope2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert statuses(bytes(t.out)) == [404, 405, 404]
    assert b"allow: GET\r\n" in t.out
    assert not t.closed


def test_request_split_across_reads_byte_by_byte(conn):
    c, t = conn
    for b in b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n":
        c.data_received(bytes([b]))
    assert statuses(bytes(t.out)) == [404]


def test_smuggling_attempt_is_400_and_closes(conn):
    c, t = conn
    c.data_received(b"POST /items HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert statuses(bytes(t.out)) == [400]
    assert b"connection: close" in t.out and t.closed
    before = bytes(t.out)
    c.data_received(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bytes(t.out) == before   # nothing more is read


def test_error_after_a_good_request_is_answered_after_it(conn):
    c, t = conn
    c.data_received(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
    assert statuses(bytes(t.out)) == [404, 400]
    assert t.closed


def test_header_limits(conn):
    c, t = conn
    c.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(6)) + b"\r\n")
    assert statuses(bytes(t.out)) == [431]


def test_uri_limit(conn):
    c, t = conn
    c.data_received(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert statuses(bytes(t.out)) == [414]


def test_problem_json_carries_request_id(conn):
    import json

    c, t = conn
    c.data_received(b"GET /nope HTTP/1.1\r\nHost: a\r\nX-Request-ID: mine-1\r\n\r\n")
    head, body = bytes(t.out).split(b"\r\n\r\n", 1)
    assert b"x-request-id: mine-1" in head and b"content-type: application/problem+json" in head
    assert json.loads(body) == {"type": "about:blank", "title": "Not Found", "status": 404,
                                "detail": "no route matches this request", "request_id": "mine-1"}
