"""The traffic policies' logic, without sockets."""
import gzip
import ipaddress
import json

import brotli
import pytest

from tollhouse.config import load_text
from tollhouse.policies.compress import BrotliStream, GzipStream, negotiate
from tollhouse.policies.cors import OriginMatcher
from tollhouse.policies.headers import _Value
from tollhouse.policies.ip import IpFilter, IpRules, NetworkSet
from tollhouse.routing import RouteTarget

BASE = """
upstreams: {u: {targets: ["http://127.0.0.1:9001"]}}
routes:
  - {match: {prefix: /}, upstream: u, EXTRA}
"""


def config_errors(extra: str) -> str:
    _, errors = load_text(BASE.replace("EXTRA", extra))
    return "\n".join(map(str, errors))


def test_network_set_matches_by_prefix_length_for_v4_and_v6():
    nets = NetworkSet([ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")])
    assert ipaddress.ip_address("10.200.3.4") in nets
    assert ipaddress.ip_address("192.168.1.7") in nets and ipaddress.ip_address("192.168.1.8") not in nets
    assert ipaddress.ip_address("2001:db8:1::5") in nets and ipaddress.ip_address("2001:db9::1") not in nets
    assert ipaddress.ip_address("11.0.0.1") not in nets


def test_ip_filter_deny_wins_and_thousands_of_entries_group_into_few_lookups():
    allow = [ipaddress.ip_network(f"100.{i // 256}.{i % 256}.0/24") for i in range(5000)]
    f = IpFilter(IpRules(allow=tuple(allow), deny=(ipaddress.ip_network("100.0.5.9/32"),)))
    assert len(f.allow.v4) == 1           # one prefix length: one set lookup per check
    assert f.permits("100.19.135.1") and not f.permits("100.0.5.9") and not f.permits("8.8.8.8")
    assert f.permits("::ffff:100.0.6.1")   # IPv4-mapped IPv6 is its IPv4 address
    assert not f.permits("not-an-ip")
    deny_only = IpFilter(IpRules(deny=(ipaddress.ip_network("10.0.0.0/8"),)))
    assert deny_only.permits("8.8.8.8") and not deny_only.permits("10.1.1.1")


def test_ip_rules_need_a_list_and_valid_cidrs():
    assert "ip.allow" in config_errors("ip: {}")
    assert "ip.deny[0]" in config_errors("ip: {deny: [10.0.0.0/33]}")


def test_origin_matching():
    m = OriginMatcher(("https://app.example", "https://*.example.org", "http://localhost:3000"))
    assert m.allows("https://app.example") and m.allows("HTTPS://APP.EXAMPLE")
    assert m.allows("https://a.example.org") and m.allows("https://a.b.example.org")
    assert not m.allows("https://example.org")            # the wildcard needs a subdomain
    assert not m.allows("https://evilexample.org") and not m.allows("https://a.example.org.evil.com")
    assert not m.allows("http://a.example.org")           # the scheme counts
    assert m.allows("http://localhost:3000") and not m.allows("http://localhost:3001")
    assert not m.allows("null")
    assert OriginMatcher(("null",)).allows("null")
    anyone = OriginMatcher(("*",))
    assert anyone.allows("https://whatever.example") and not anyone.allows("null")


def test_cors_config_refuses_wildcard_with_credentials_and_bad_origins():
    assert "cors.credentials" in config_errors("cors: {origins: ['*'], credentials: true}")
    assert "cors.origins[0]" in config_errors("cors: {origins: ['ftp://x']}")


@pytest.mark.parametrize("header, expected", [
    ("gzip", "gzip"), ("br, gzip", "br"), ("gzip;q=1.0, br;q=0.9", "gzip"), ("GZIP", "gzip"),
    ("br;q=0", None), ("*;q=0.1", "br"), ("deflate", None), (None, None), ("gzip;q=abc", None),
])
def test_accept_encoding_negotiation(header, expected):
    assert negotiate(header, ("br", "gzip")) == expected


def test_compressors_stream_and_round_trip():
    data = [json.dumps({"i": i, "pad": "x" * 100}).encode() for i in range(2000)]
    for stream, decompress in ((GzipStream(5), gzip.decompress), (BrotliStream(4), brotli.decompress)):
        out = b"".join(stream.feed(d) for d in data) + stream.finish()
        assert decompress(out) == b"".join(data) and len(out) < len(b"".join(data)) / 5


class _Ex:
    consumer = "alice"
    request_id = b"rid-1"
    client_ip = "10.0.0.9"


def test_header_values_fill_placeholders_and_strip_line_breaks():
    assert _Value("static").render(_Ex()) == "static"
    assert _Value("{consumer}@{client_ip}/{request_id}").render(_Ex()) == "alice@10.0.0.9/rid-1"
    ex = _Ex()
    ex.consumer = "evil\r\nX-Injected: 1"
    assert "\r" not in _Value("c={consumer}").render(ex) and "\n" not in _Value("c={consumer}").render(ex)


def test_header_config_refuses_unknown_placeholders_and_framing_headers():
    text = config_errors("headers: {request: {set: {X-A: '{user}', Host: x}, remove: [Content-Length]}, "
                         "response: {set: {Transfer-Encoding: x}}}")
    assert "unknown placeholder {user}" in text
    assert "request.set.Host" in text and "request.remove" in text and "response.set.Transfer-Encoding" in text


def test_request_rules_check_the_schema_file(tmp_path):
    assert "cannot read" in config_errors(f"request: {{json_schema: {tmp_path}/missing.json}}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "no-such-type"}')
    assert "not a valid JSON Schema" in config_errors(f"request: {{json_schema: {bad}}}")


def test_regex_rewrite():
    from tollhouse.config.model import RegexRewrite

    r = RouteTarget("r", 0, prefix="/old", rewrite=RegexRewrite(regex=r"^/old/(?P<a>\w+)/(\d+)", to="/new/{a}/{2}"))
    assert r.upstream_path(b"/old/x/7/rest", None) == b"/new/x/7"
    assert r.upstream_path(b"/elsewhere", None) == b"/elsewhere"
    assert "rewrite.to" in config_errors("rewrite: {regex: '^/(a)$', to: '/{2}'}")
    assert "rewrite.regex" in config_errors("rewrite: {regex: '(', to: '/x'}")
