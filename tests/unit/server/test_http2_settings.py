"""The `http2:` section and upstream protocols, and what a build without nghttp2 says."""
from tollhouse.config import load_text
from tollhouse.server import http2 as server_http2
from tollhouse.upstream import http2 as upstream_http2

UPSTREAM = """
upstreams:
  inner:
    protocol: h2c
    targets: [http://127.0.0.1:9000]
  secure:
    protocol: http2
    targets: [https://127.0.0.1:9001]
routes:
  - {name: r, match: {prefix: /}, upstream: inner}
"""


def test_defaults_and_settings():
    config, errors = load_text(UPSTREAM)
    assert errors == []
    settings = server_http2.settings_of(config)
    assert settings is not None and settings.max_concurrent_streams == 128
    assert settings.initial_window_size == 64 * 1024 and settings.max_resets_per_second == 100
    config, errors = load_text("http2: {enabled: false, max_concurrent_streams: 8}\n" + UPSTREAM)
    assert errors == [] and server_http2.settings_of(config) is None
    assert config.upstreams["inner"].protocol == "h2c"


def test_bad_settings_name_the_key():
    _, errors = load_text("http2: {max_concurrent_streams: 0}\n" + UPSTREAM)
    assert any("http2.max_concurrent_streams" in str(e) for e in errors)
    _, errors = load_text(UPSTREAM.replace("protocol: h2c", "protocol: h3"))
    assert any("upstreams.inner.protocol" in str(e) for e in errors)
    _, errors = load_text(UPSTREAM.replace("targets: [http://127.0.0.1:9000]", "targets: [https://127.0.0.1:9000]"))
    assert any("upstreams.inner.targets[0]" in str(e) and "h2c targets are http://" in str(e) for e in errors)
    _, errors = load_text(UPSTREAM.replace("protocol: http2", "protocol: grpc"))
    assert any("upstreams.secure.protocol" in str(e) and "grpc://" in str(e) for e in errors)


def test_a_build_without_nghttp2_says_http2_is_unavailable(monkeypatch):
    monkeypatch.setattr(server_http2, "AVAILABLE", False)
    monkeypatch.setattr(upstream_http2, "nghttp2", None)
    _, errors = load_text("http2: {enabled: true}\n" + UPSTREAM)
    text = "\n".join(map(str, errors))
    assert "http2 is unavailable" in text and "upstreams.inner.protocol" in text
    config, errors = load_text("http2: {enabled: false}\nlisten: 127.0.0.1:8080\n")
    assert errors == [] and server_http2.settings_of(config) is None   # HTTP/1.1 keeps working


def test_grpc_timeout_units():
    assert server_http2.grpc_timeout(b"300m") == 0.3
    assert server_http2.grpc_timeout(b"2S") == 2.0
    assert server_http2.grpc_timeout(b"1H") == 3600.0
    assert server_http2.grpc_timeout(b"5n") == 1e-3   # never below a millisecond
    assert server_http2.grpc_timeout(b"123456789S") == 0.0   # more than 8 digits: ignored
    assert server_http2.grpc_timeout(b"10x") == 0.0
