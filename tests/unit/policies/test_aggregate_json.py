"""An aggregate without a merge function only checks that each answer is JSON, then splices its
bytes (docs/aggregation.md): the check must give orjson's verdict on every body, and refuse
what cannot be spliced."""
import orjson
import pytest

from tollhouse.policies.aggregate import _is_json

BODIES = [
    b"", b" ", b"{}", b"[]", b"1", b'"x"', b"true", b"nul", b"NaN", b"Infinity", b"[1,]", b'{"a":1,}', b"/*c*/{}",
    b'{"a":"\\ud800"}', b'{"a":"\\udc00\\ud800"}', b'"\\ud83d\\ude00"', b'"\\x"', b'"\\u00"',
    b"123456789012345678901234567890", b"-123456789012345678901234567890", b"18446744073709551616",
    b"-9223372036854775809", b"1e400", b"-0", b"01", b"1.", b".5", b'"\x01"', b'"\x7f"',
    b'{"a":1}{"b":2}', b'{"a":1} ', b'\n{"a": [1, 2.5e3, null]}\n', b'{"a":1}\x00',
    b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"caf\xc3\xa9"', b"[" * 1000 + b"]" * 1000, b"[" * 1100 + b"]" * 1100,
]


def _orjson_verdict(body: bytes) -> bool:
    try:
        orjson.loads(body)
        return True
    except orjson.JSONDecodeError:
        return False


@pytest.mark.parametrize("body", BODIES, ids=lambda b: repr(b[:24]))
def test_the_check_gives_orjsons_verdict(body):
    assert _is_json(body) is _orjson_verdict(body)


def test_a_byte_order_mark_is_refused():
    """simdjson skips a leading BOM, orjson refuses it; spliced, it would break the merged object."""
    assert _is_json(b"\xef\xbb\xbf{}") is False


def test_the_check_leaves_its_parser_free():
    """The parser is reused: a document kept alive would make the next check fail."""
    for _ in range(3):
        assert _is_json(b'{"a":[1,2,{"b":"c"}]}')
        assert not _is_json(b'{"a":')
