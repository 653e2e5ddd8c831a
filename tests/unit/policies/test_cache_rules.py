"""RFC 9111 decisions and the memory cache, without sockets."""
import pytest

from tollhouse.policies.cache.rules import ResponseFacts, lifetime, not_modified, parse_cache_control
from tollhouse.policies.cache.schema import RouteCache
from tollhouse.policies.cache.storage import Entry, MemoryCache

NOW = 1_800_000_000.0
DATE = "Fri, 15 Jan 2027 08:00:00 GMT"   # = NOW


def route(**kw):
    return RouteCache(**kw)


def facts(*lines: str) -> ResponseFacts:
    return ResponseFacts([f"{line}\r\n".encode() for line in lines])


def test_cache_control_parsing_unquotes_and_keeps_the_first_of_a_directive():
    cc = parse_cache_control('public, max-age=60, no-cache="Set-Cookie, X-A", max-age=5, S-MAXAGE=7')
    assert cc == {"public": None, "max-age": "60", "no-cache": "Set-Cookie, X-A", "s-maxage": "7"}


def test_facts_keep_only_storable_lines_and_read_the_rest():
    f = facts("Content-Type: text/plain", "Date: " + DATE, "Age: 12", "Set-Cookie: a=b", "Surrogate-Key: a b",
              "ETag: \"x\"", "Vary: Accept-Language, accept-encoding", "Content-Length: 5", "X-Request-ID: r")
    assert f.lines == [b"Content-Type: text/plain\r\n", b'ETag: "x"\r\n',
                       b"Vary: Accept-Language, accept-encoding\r\n"]
    assert f.age == 12 and f.set_cookie and f.surrogate_keys == ["a", "b"] and f.etag == '"x"'
    assert f.vary == ["accept-language", "accept-encoding"] and f.date == NOW


@pytest.mark.parametrize("lines, expected", [
    (("Cache-Control: s-maxage=30, max-age=600",), 30),
    (("Cache-Control: max-age=600",), 600),
    (("Expires: Fri, 15 Jan 2027 08:01:40 GMT", "Date: " + DATE), 100),
    ((), 60),                                              # the route's ttl
    (("Cache-Control: max-age=600", "Age: 100"), 500),   # an upstream cache's age counts
    (("Cache-Control: max-age=abc",), 60),              # an invalid value is ignored
])
def test_freshness_order_cache_control_then_expires_then_route_ttl(lines, expected):
    life, why = lifetime(200, facts(*lines), route(ttl=60), NOW)
    assert why == "" and life.fresh == expected


@pytest.mark.parametrize("status, lines, why", [
    (200, ("Cache-Control: no-store",), "no-store"),
    (200, ("Cache-Control: private",), "private"),
    (200, ("Cache-Control: no-cache",), "no-cache"),
    (200, ("Set-Cookie: s=1",), "Set-Cookie"),
    (200, ("Vary: *",), "Vary"),
    (500, (), "status"),
    (206, (), "status"),
    (200, ("Expires: 0",), "stale"),
])
def test_never_stored(status, lines, why):
    life, reason = lifetime(status, facts(*lines), route(), NOW)
    assert life is None and why in reason


def test_default_statuses_include_404_and_301_and_the_route_may_narrow_them():
    assert lifetime(404, facts(), route(), NOW)[0] is not None
    assert lifetime(301, facts(), route(), NOW)[0] is not None
    assert lifetime(404, facts(), route(statuses=(200,)), NOW)[0] is None


def test_stale_windows_from_route_unless_the_response_sets_them_and_must_revalidate_forbids_them():
    life, _ = lifetime(200, facts(), route(stale_while_revalidate=10, stale_if_error=60), NOW)
    assert (life.while_revalidate, life.if_error, life.total) == (10, 60, 120)
    life, _ = lifetime(200, facts("Cache-Control: max-age=5, stale-while-revalidate=3, stale-if-error=4"),
                       route(stale_while_revalidate=10, stale_if_error=60), NOW)
    assert (life.while_revalidate, life.if_error) == (3, 4)
    life, _ = lifetime(200, facts("Cache-Control: max-age=5, must-revalidate"), route(stale_if_error=60), NOW)
    assert (life.while_revalidate, life.if_error) == (0, 0)
    # Stale right away but with a stale window: still worth storing.
    assert lifetime(200, facts("Cache-Control: max-age=0"), route(stale_if_error=60), NOW)[0] is not None


def test_shared_means_public_or_s_maxage():
    assert lifetime(200, facts("Cache-Control: public"), route(), NOW)[0].shared
    assert lifetime(200, facts("Cache-Control: s-maxage=5"), route(), NOW)[0].shared
    assert not lifetime(200, facts("Cache-Control: max-age=5"), route(), NOW)[0].shared


def test_conditionals():
    assert not_modified('"a", W/"b"', None, 'W/"b"', None)       # weak comparison
    assert not_modified("*", None, None, None)
    assert not not_modified('"c"', None, '"b"', None)
    assert not not_modified('"c"', "Fri, 15 Jan 2027 08:00:00 GMT", '"b"', "Thu, 01 Jan 2026 00:00:00 GMT")
    assert not_modified(None, "Fri, 15 Jan 2027 08:00:00 GMT", None, "Thu, 01 Jan 2026 00:00:00 GMT")
    assert not not_modified(None, "Thu, 01 Jan 2026 00:00:00 GMT", None, "Fri, 15 Jan 2027 08:00:00 GMT")
    assert not not_modified(None, "garbage", None, "Fri, 15 Jan 2027 08:00:00 GMT")
    assert not not_modified(None, None, '"b"', None)


def entry(body=b"x" * 100, route="r", path="/p", tags=(), until=NOW + 60):
    return Entry(200, (b"content-type: text/plain\r\n",), body, NOW, 0, until, until, until, route=route, path=path,
                 tags=tags)


def test_entries_survive_encoding_for_redis():
    e = Entry(200, (b"content-type: text/plain\r\n",), b"\x00body\xff", NOW, 3, NOW + 1, NOW + 2, NOW + 3, True,
              '"e"', "Thu, 01 Jan 2026 00:00:00 GMT", "r", "/p", ("a", "b"), None)
    d = Entry.decode(e.encode())
    assert [getattr(d, s) for s in Entry.__slots__] == [getattr(e, s) for s in Entry.__slots__]
    marker = Entry.decode(Entry(vary=("accept-language",), fresh_until=NOW).encode())
    assert marker.vary == ("accept-language",)
    assert Entry.decode(b"TC0 an old format") is None


def test_memory_cache_is_bounded_by_bytes_and_evicts_least_recently_used():
    one = entry()
    cache = MemoryCache(one.size * 3)
    for k in "abc":
        cache.put(k, entry())
    assert cache.get("a", NOW) is not None   # a is now the most recent
    cache.put("d", entry())
    assert cache.get("b", NOW) is None and cache.get("a", NOW) is not None
    assert cache.size == one.size * 3
    cache.put("huge", entry(body=b"x" * one.size * 4))
    assert cache.get("huge", NOW) is None and cache.size == one.size * 3


def test_memory_cache_drops_expired_entries_on_lookup_and_purges_by_filters():
    cache = MemoryCache(1 << 20)
    cache.put("old", entry(until=NOW - 1))
    assert cache.get("old", NOW) is None and cache.size == 0
    cache.put("1", entry(route="r1", path="/a/1", tags=("t",)))
    cache.put("2", entry(route="r1", path="/b/2"))
    cache.put("3", entry(route="r2", path="/a/3", tags=("t",)))
    assert cache.purge(route="r1", prefix="/a") == 1
    assert cache.purge(tag="t") == 1
    assert cache.purge() == 1 and cache.size == 0
