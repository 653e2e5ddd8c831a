"""The request's policy API on a real Exchange over a stand-in connection (no sockets)."""
import pytest

from tests.unit.exchange.stand_ins import Connection

from tollhouse.exchange.lifecycle import Exchange
from tollhouse.identity import Identity
from tollhouse.registry import noted_index


@pytest.fixture
def ex():
    e = Exchange(Connection(), None)
    e.headers = [b"Accept: text/plain\r\n", b"X-Two: 1\r\n", b"x-two: 2\r\n", b"Authorization: Bearer t\r\n"]
    return e


def test_headers_are_found_set_and_removed_case_insensitively(ex):
    assert ex.header("accept") == "text/plain" and ex.header("X-TWO") == "1"
    assert ex.header_count("x-two") == 2
    ex.set_header("X-Two", "3")
    assert ex.header_count("x-two") == 1 and ex.header("x-two") == "3"
    ex.remove_header("accept")
    assert ex.header("accept") is None


def test_a_noted_header_is_read_by_index_and_removed_with_its_line(ex):
    authorization = noted_index("authorization")
    assert ex.noted_value(authorization) is None and not ex.noted_any((authorization,))
    ex.noted = [None] * 8
    ex.noted[authorization] = b"Bearer t"
    assert ex.noted_value(authorization) == b"Bearer t" and ex.noted_any((noted_index("cookie"), authorization))
    ex.remove_header("Authorization")
    assert ex.noted_value(authorization) is None and ex.header("authorization") is None


def test_the_caller_is_one_identity(ex):
    assert ex.identity is None and ex.consumer is None
    ex.identity = Identity("alice", "gold", frozenset({"read"}), frozenset(), provider="dev", credential="jwt",
                           claims={"sub": "alice"})
    assert ex.consumer == "alice"
    assert ex.identity.upstream_lines == (b"x-consumer-id: alice\r\n", b"x-consumer-tier: gold\r\n",
                                          b"x-auth-scopes: read\r\n")


def test_body_filters_run_in_phase_order_whatever_order_the_hooks_add_them(ex):
    """Response hooks run in reverse phase order: each filter goes before those added already."""
    from tollhouse.exchange.relay import filtered, filters_finished

    class Tag:
        def __init__(self, tag):
            self.tag = tag

        def feed(self, chunk):
            return chunk + self.tag

        def finish(self):
            return b"|" + self.tag

    ex.add_body_filter(Tag(b"[transform]"))   # the later phase's hook runs first
    ex.add_body_filter(Tag(b"[access]"))
    assert filtered(ex.body_filters, b"body") == b"body[access][transform]"
    assert filters_finished(ex.body_filters) == b"|[access][transform]|[transform]"


def test_a_body_reader_added_late_reads_what_was_buffered(ex):
    class Collect:
        def __init__(self):
            self.seen, self.ended = [], False

        def feed(self, exchange, chunk):
            self.seen.append(chunk)
            return None

        def end(self, exchange):
            self.ended = True
            return None

    ex.body_chunks = [b"a", b"b"]
    reader = Collect()
    assert ex.add_body_reader(reader) is None
    assert reader.seen == [b"a", b"b"] and not reader.ended
    ex.body_done = True
    late = Collect()
    ex.add_body_reader(late)
    assert late.seen == [b"a", b"b"] and late.ended
