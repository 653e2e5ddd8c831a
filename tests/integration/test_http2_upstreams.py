"""Upstreams spoken to in HTTP/2 (`protocol: h2c` and `http2`, docs/http2.md). The HTTP/2
upstream is a second gateway (an HTTP/2 server with nghttp2, checked by its own tests with
curl, h2load and nghttp), which proxies to the HTTP/1.1 test upstream."""
import json
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.support.client import request
from tests.support.processes import Gateway, refused_port
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def origin():
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def h2_server(origin):
    """An HTTP/2 server allowing 4 streams at once per connection."""
    g = Gateway(f"""
http2: {{max_concurrent_streams: 4}}
upstreams:
  origin: {{targets: ["{origin.url}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: origin}}
""").start()
    yield g
    g.cleanup()


def front_config(url: str, protocol: str, extra: str = "") -> str:
    return f"""
upstreams:
  h2:
    protocol: {protocol}
    targets: ["{url}"]
    max_connections: 2
    connect_timeout: 2s
{extra}
routes:
  - {{name: via, match: {{prefix: /}}, upstream: h2}}
"""


def get(g, path: str, method: str = "GET", body: bytes = b""):
    headers = f"Content-Length: {len(body)}\r\n" if body else ""
    return request(g.port, f"{method} {path} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode() + body, method)


def test_h2c_upstream_relays_requests_bodies_and_headers(gateway_factory, h2_server, origin):
    g = gateway_factory(front_config(h2_server.url("/"), "h2c"))
    r = get(g, "/echo?x=1")
    assert r.status == 200
    echoed = json.loads(r.body)
    assert echoed["target"] == "/echo?x=1"
    assert echoed["headers"]["x-forwarded-for"].startswith("127.0.0.1")
    r = get(g, "/upload", "POST", b"q" * 200_000)
    assert json.loads(r.body)["length"] == 200_000
    r = get(g, "/big?bytes=3000000")
    assert r.status == 200 and len(r.body) == 3_000_000
    r = get(g, "/nocontent")
    assert r.status == 204


def test_many_requests_share_few_connections_within_the_peers_stream_limit(gateway_factory, h2_server, origin):
    g = gateway_factory(front_config(h2_server.url("/"), "h2c"))
    statuses = []

    def one():
        statuses.append(get(g, "/slow?ms=200").status)

    threads = [threading.Thread(target=one) for _ in range(16)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    assert statuses == [200] * 16
    # 2 connections x 4 streams: 8 at a time, so 16 take two rounds of 200 ms, not one nor sixteen.
    assert 0.35 < took < 2.0, took
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{g.admin_port}/status", timeout=5).read())
    assert status["upstreams"]["h2"]["targets"][0]["open_connections"] <= 2


def test_tls_upstream_with_alpn_h2(gateway_factory, origin, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = gateway_factory(f"""
tls: {{cert: {tmp_path}/cert.pem, key: {tmp_path}/key.pem}}
access_log: true
upstreams:
  origin: {{targets: ["{origin.url}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: origin}}
""")
    g = gateway_factory(front_config(f"https://127.0.0.1:{server.port}", "http2", f"    ca_file: {tmp_path}/cert.pem"))
    r = get(g, "/over-tls")
    assert r.status == 200 and json.loads(r.body)["target"] == "/over-tls"
    time.sleep(1.2)
    lines = [json.loads(x) for x in server.stdout().splitlines() if x.startswith("{")]
    assert lines[-1]["path"] == "/over-tls" and lines[-1]["protocol"] == "HTTP/2"


def test_an_unreachable_h2c_target_is_502_and_retries_go_to_another(gateway_factory, h2_server):
    g = gateway_factory(front_config(h2_server.url("/"), "h2c").replace(
        f'targets: ["{h2_server.url("/")}"]',
        f'targets: ["http://127.0.0.1:{refused_port()}", "{h2_server.url("/")}"]\n'
        "    retries: {attempts: 2, on: [connect_error]}"))
    for _ in range(4):
        assert get(g, "/retry-me").status == 200
    g2 = gateway_factory(front_config(f"http://127.0.0.1:{refused_port()}", "h2c"))
    assert get(g2, "/x").status == 502


def test_an_http1_only_target_fails_cleanly(gateway_factory, origin):
    g = gateway_factory(front_config(origin.url, "h2c", "    read_timeout: 1s"))
    r = get(g, "/x")
    assert r.status in (502, 504)
    assert get(g, "/y").status in (502, 504)   # and the gateway goes on


def test_health_checks_probe_h2c_targets_over_http2(gateway_factory, h2_server):
    dead = f"http://127.0.0.1:{refused_port()}"
    g = gateway_factory(front_config(h2_server.url("/"), "h2c").replace(
        f'targets: ["{h2_server.url("/")}"]', f'targets: ["{h2_server.url("/")}", "{dead}"]\n'
        "    health_check: {path: /health, interval: 200ms, unhealthy: 1, healthy: 1, timeout: 500ms}"))

    def healthy() -> dict:
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{g.admin_port}/status", timeout=5).read())
        return {t["url"]: t["healthy"] for t in status["upstreams"]["h2"]["targets"]}

    from tests.support.processes import wait_for

    wait_for(lambda: healthy() == {h2_server.url("/"): True, dead: False}, timeout=10)
    assert {get(g, "/x").status for _ in range(6)} == {200}   # never the dead target
