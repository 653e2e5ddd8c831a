"""HTTP/2 towards clients (docs/http2.md): real clients (curl, h2load, nghttp) for what
works, a raw frame writer (tests/support/h2raw.py) for what must be refused. After
every refusal the gateway serves other connections."""
import json
import shutil
import ssl
import subprocess
import time

import pytest

from tests.integration.conftest import basic_config
from tests.support.h2raw import (ContinuationFrame, DataFrame, HeadersFrame, RawH2, RstStreamFrame,
                                 SettingsFrame, WindowUpdateFrame)
from tests.support import h2raw
from tests.support.processes import Gateway, RssWatch
from tests.support.upstream import Upstream

pytestmark = pytest.mark.skipif(not shutil.which("h2load") or not shutil.which("curl"),
                                reason="needs nghttp2-client and curl (make test installs them)")

LIMITS = """limits:
  max_header_bytes: 4KiB
  max_headers: 40
  max_uri_bytes: 512
  max_body_bytes: 1MiB
  header_timeout: 1s
  idle_timeout: 3s
http2:
  max_concurrent_streams: 64
  max_resets_per_second: 50
access_log: true
"""


@pytest.fixture(scope="module")
def setup():
    from tests.support.processes import Gateway as G

    u = Upstream().start()
    g = G(basic_config(u.url, extra=LIMITS)).start()
    yield g, u
    g.cleanup()
    u.stop()


def curl(*args, timeout=10) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def still_serving(g) -> None:
    """The gateway answers a fresh HTTP/2 client and a fresh HTTP/1.1 client."""
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", g.url("/api/ok"))
    assert r.stdout == b"200 2", r
    r = curl("-o", "/dev/null", "-w", "%{http_code} %{http_version}", g.url("/api/ok"))
    assert r.stdout == b"200 1.1", r


def access_lines(g) -> list:
    return [json.loads(line) for line in g.stdout().splitlines() if line.startswith("{")]


# ------------------------------------------------------------------ real clients
def test_curl_prior_knowledge_goes_through_the_route_like_http1(setup):
    g, u = setup
    r = curl("--http2-prior-knowledge", "-i", "-H", "Cookie: a=1", "-H", "Cookie: b=2",
             g.url("/api/things?x=1"))
    head, body = r.stdout.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/2 200"), head
    echoed = json.loads(body)
    assert echoed["method"] == "GET" and echoed["target"] == "/things?x=1"   # strip_prefix applied
    headers = echoed["headers"]
    assert headers["x-forwarded-host"] == f"127.0.0.1:{g.port}"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["cookie"] == "a=1; b=2"   # RFC 9113 §8.2.3: crumbs joined for HTTP/1.1
    assert "x-request-id" in headers and b"x-request-id: " + headers["x-request-id"].encode() in head


def test_request_bodies_stream_with_and_without_content_length(setup):
    g, u = setup
    body = b"z" * 300_000
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", g.url("/api/upload")],
                       input=body, capture_output=True, timeout=10)
    assert json.loads(r.stdout)["length"] == len(body)
    # No content-length: chunked towards the HTTP/1.1 upstream.
    c = RawH2(g.port).start()
    c.request(1, "/api/upload", "POST", body=None, end_stream=False)
    for _ in range(5):
        c.send(DataFrame(1, b"a" * 1000))
    c.send(DataFrame(1, b"", flags=["END_STREAM"]))
    resp = c.response(1)
    assert resp.status == 200
    assert json.loads(resp.body)["length"] == 5000
    assert u.requests[-1]["headers"].get("transfer-encoding") == "chunked"
    c.close()


def test_head_and_no_content_carry_no_body(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/big?bytes=1000", "HEAD")
    r = c.response(1)
    assert r.status == 200 and r.body == b"" and r.ended and r.header("content-length") == "1000"
    c.request(3, "/api/nocontent")
    r = c.response(3)
    assert r.status == 204 and r.body == b"" and r.ended
    c.close()


def test_many_concurrent_streams_on_few_connections(setup):
    g, u = setup
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16", g.url("/api/ok")], capture_output=True,
                       timeout=60, text=True)
    assert "2000 succeeded" in r.stdout, r.stdout
    assert "2000 2xx" in r.stdout, r.stdout
    lines = access_lines(g)
    assert any(line["protocol"] == "HTTP/2" for line in lines)


def test_one_failing_stream_leaves_its_neighbours_alone(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/slow?ms=300")
    c.request(3, "/api/hang")          # will be reset by the client
    c.request(5, "/api/status/503")
    c.send(RstStreamFrame(3, error_code=h2raw.CANCEL))
    c.request(7, "/api/x", extra=[("connection", "keep-alive")])   # a stream error: RST PROTOCOL_ERROR
    assert c.response(7).reset == h2raw.PROTOCOL_ERROR
    assert c.response(5).status == 503
    assert c.response(1).status == 200
    c.request(9, "/api/ok")
    assert c.response(9).status == 200
    c.close()


def test_expect_100_continue(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/upload", "POST", extra=[("expect", "100-continue"), ("content-length", "5")], end_stream=False)
    frame = c.next_frame()
    while frame is not None and not isinstance(frame, HeadersFrame):
        frame = c.next_frame()
    assert frame is not None
    assert (b":status", b"100") in [(n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
                                    for n, v in c.decoder.decode(frame.data)]
    c.send(DataFrame(1, b"hello", flags=["END_STREAM"]))
    r = c.response(1)
    assert r.status == 200 and json.loads(r.body)["length"] == 5
    c.close()


def test_tls_alpn_offers_h2_and_curl_uses_it(gateway_factory, upstream, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    g = gateway_factory(basic_config(upstream.url, extra=f"tls: {{cert: {tmp_path}/cert.pem, key: {tmp_path}/key.pem}}"))
    url = f"https://127.0.0.1:{g.port}/api/ok"
    r = curl("--http2", "--cacert", str(tmp_path / "cert.pem"), "-o", "/dev/null", "-w", "%{http_version}", url)
    assert r.stdout == b"2", r
    r = curl("--http1.1", "--cacert", str(tmp_path / "cert.pem"), "-o", "/dev/null", "-w", "%{http_version}", url)
    assert r.stdout == b"1.1", r
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    import socket

    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.port)), server_hostname="127.0.0.1") as s:
        assert s.selected_alpn_protocol() == "h2"


def test_nghttp_reads_a_large_body_under_flow_control(setup):
    g, u = setup
    r = subprocess.run(["nghttp", "-n", "-s", "-w", "16", g.url("/api/big?bytes=3000000")], capture_output=True,
                       timeout=60, text=True)
    assert r.returncode == 0, r.stderr
    assert "3000000" in r.stdout or "2.86MB" in r.stdout or "2.9MB" in r.stdout, r.stdout


def test_a_stalled_reader_pauses_its_upstream_with_bounded_memory(setup):
    g, u = setup
    size = 128 * 1024 * 1024
    with RssWatch(g.proc.pid) as rss:
        c = RawH2(g.port)
        c.start({SettingsFrame.INITIAL_WINDOW_SIZE: 65535})
        c.request(1, f"/api/big?bytes={size}")
        # Read nothing past the first window for a while: the gateway must stop reading the upstream.
        time.sleep(1.5)
        got = 0
        deadline = time.monotonic() + 60
        while got < size and time.monotonic() < deadline:
            frame = c.next_frame()
            assert frame is not None, "the stream stopped"
            if isinstance(frame, DataFrame):
                got += len(frame.data)
                c.responses[1].body = b""   # the test's own memory, not the gateway's
        c.close()
    assert got == size
    assert rss.growth_kib < 64 * 1024, rss.growth_kib


def test_access_log_and_metrics_name_the_protocol(setup):
    g, u = setup
    curl("--http2-prior-knowledge", "-o", "/dev/null", g.url("/api/logged"))
    time.sleep(1.2)
    line = [x for x in access_lines(g) if x["path"] == "/api/logged"][-1]
    assert line["protocol"] == "HTTP/2" and line["status"] == 200 and line["grpc_status"] is None
    status, metrics = g.get_admin("/metrics")
    text = metrics.decode()
    assert "tollhouse_http2_requests_total" in text
    assert "tollhouse_http2_connections_total" in text


# ------------------------------------------------------------ translation rules
@pytest.mark.parametrize("extra", [
    [("connection", "close")], [("transfer-encoding", "chunked")], [("upgrade", "websocket")],
    [("keep-alive", "5")], [("proxy-connection", "x")], [("te", "gzip")], [("X-Upper", "1")],
])
def test_connection_specific_and_malformed_fields_are_a_stream_protocol_error(setup, extra):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/x", extra=extra)
    assert c.response(1).reset == h2raw.PROTOCOL_ERROR
    c.request(3, "/api/x", extra=[("te", "trailers")])   # the one te allowed
    assert c.response(3).status == 200
    c.close()
    still_serving(g)


def test_authority_and_host_must_agree(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/x", extra=[("host", "elsewhere.example")])
    r = c.response(1)
    assert r.status == 400 and b"disagree" in r.body
    c.request(3, "/api/x", extra=[("host", c.authority)])
    assert c.response(3).status == 200
    c.close()


def test_content_length_that_disagrees_with_data_is_a_stream_error(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/upload", "POST", extra=[("content-length", "10")], body=b"12345")
    assert c.response(1).reset == h2raw.PROTOCOL_ERROR
    c.request(3, "/api/ok")
    assert c.response(3).status == 200
    c.close()


def test_limits_apply_per_stream_with_http1s_statuses(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/" + "a" * 600)
    assert c.response(1).status == 414
    c.request(3, "/api/x", extra=[(f"x-h{i}", "v") for i in range(50)])
    assert c.response(3).status == 431
    c.request(5, "/api/x", extra=[("x-big", "v" * 5000)])
    assert c.response(5).status == 431
    c.request(7, "/api/upload", "POST", extra=[("content-length", str(2 * 1024 * 1024))], end_stream=False)
    assert c.response(7).status == 413
    c.request(9, "/api/ok")
    assert c.response(9).status == 200
    c.close()


# ------------------------------------------------------------------ protection
def test_a_bad_preface_is_refused(setup):
    g, u = setup
    c = RawH2(g.port)
    c.raw(h2raw.PREFACE + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x10\x00")   # WINDOW_UPDATE, not SETTINGS
    assert c.until_goaway().error_code == h2raw.PROTOCOL_ERROR
    assert c.until_closed()
    still_serving(g)


def test_an_http1_request_that_only_looks_like_the_preface_is_http1(setup):
    g, u = setup
    import socket

    with socket.create_connection(("127.0.0.1", g.port)) as s:
        s.sendall(b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 4")


@pytest.mark.parametrize("settings,code", [
    ({SettingsFrame.INITIAL_WINDOW_SIZE: 2 ** 31}, h2raw.FLOW_CONTROL_ERROR),
    ({SettingsFrame.ENABLE_PUSH: 2}, h2raw.PROTOCOL_ERROR),
    ({SettingsFrame.MAX_FRAME_SIZE: 100}, h2raw.PROTOCOL_ERROR),
])
def test_bad_settings_end_the_connection(setup, settings, code):
    g, u = setup
    c = RawH2(g.port).start(settings)
    assert c.until_goaway().error_code == code
    still_serving(g)


def test_window_overflow_is_a_flow_control_error(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.send(WindowUpdateFrame(0, 2 ** 31 - 1))
    assert c.until_goaway().error_code == h2raw.FLOW_CONTROL_ERROR
    still_serving(g)


def test_data_on_a_closed_stream_is_refused(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/ok")
    assert c.response(1).status == 200
    c.send(DataFrame(1, b"late", flags=["END_STREAM"]))
    goaway = c.until_goaway(2)
    assert (goaway is not None and goaway.error_code == h2raw.STREAM_CLOSED) or c.responses[1].reset == h2raw.STREAM_CLOSED
    still_serving(g)


def test_hpack_garbage_is_a_compression_error(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.send(HeadersFrame(1, b"\xff\xff\xff\xff\xff\xff", flags=["END_HEADERS", "END_STREAM"]))
    assert c.until_goaway().error_code == h2raw.COMPRESSION_ERROR
    still_serving(g)


def test_a_continuation_flood_is_cut_off(setup):
    g, u = setup
    c = RawH2(g.port).start()
    block = c.block(c.request_pairs("/api/x"))
    c.send(HeadersFrame(1, block[:1], flags=["END_STREAM"]))
    try:
        for _ in range(2000):
            c.send(ContinuationFrame(1, b"\x40\x01a\x01b"))   # literal fields, never END_HEADERS
    except OSError:
        pass   # already cut off (the GOAWAY before it may be lost to the reset our writes caused)
    assert c.until_closed()
    assert c.goaway is None or c.goaway.error_code != h2raw.NO_ERROR
    still_serving(g)


def test_rapid_reset_gets_goaway_enhance_your_calm(setup):
    g, u = setup
    c = RawH2(g.port).start()
    frames = []
    for i in range(200):
        sid = 1 + 2 * i
        frames += [c.headers_frame(sid, c.request_pairs("/api/slow?ms=200")), RstStreamFrame(sid, error_code=8)]
    try:
        c.send(*frames)
    except OSError:
        pass
    goaway = c.until_goaway()
    assert goaway is not None and goaway.error_code == h2raw.ENHANCE_YOUR_CALM
    assert c.until_closed()
    still_serving(g)


def test_idle_connections_are_closed(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/ok")
    assert c.response(1).status == 200
    assert c.until_closed(6)   # idle_timeout: 3s
    assert c.goaway is not None and c.goaway.error_code == h2raw.NO_ERROR


def test_drain_sends_goaway_and_lets_open_streams_finish(upstream):
    import signal

    g = Gateway(basic_config(upstream.url, extra="shutdown_grace: 5s\n")).start()
    try:
        c = RawH2(g.port).start()
        c.request(1, "/api/slow?ms=700")
        time.sleep(0.2)
        g.signal(signal.SIGTERM)
        goaway = c.until_goaway()
        assert goaway is not None and goaway.error_code == h2raw.NO_ERROR
        r = c.response(1)
        assert r.status == 200 and r.body == b"slow"
        assert g.proc.wait(10) == 0
    finally:
        g.cleanup()


def test_max_concurrent_streams_is_advertised_and_enforced(setup):
    g, u = setup
    c = RawH2(g.port).start()
    frame = c.next_frame()
    assert isinstance(frame, SettingsFrame)
    assert frame.settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS) == 64
    for i in range(64):   # up to the limit: all served at once
        c.request(1 + 2 * i, "/api/slow?ms=300")
    assert [c.response(1 + 2 * i).status for i in range(64)] == [200] * 64
    c.close()
    c = RawH2(g.port).start()
    c.next_frame()
    for i in range(70):   # past it: refused (nghttp2 ends the connection: PROTOCOL_ERROR)
        c.request(1 + 2 * i, "/api/slow?ms=300")
    c.response(139)
    refused = c.responses.get(139)
    assert (refused is not None and refused.reset in (h2raw.REFUSED_STREAM, h2raw.PROTOCOL_ERROR)) or (
        c.goaway is not None and c.goaway.error_code == h2raw.PROTOCOL_ERROR and c.goaway.last_stream_id < 139)
    c.close()
    still_serving(g)


def test_the_gateway_without_http2_treats_the_preface_as_http1(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra="http2: {enabled: false}\n"))
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", g.url("/api/ok"))
    assert r.stdout != b"200"
    r = curl("-o", "/dev/null", "-w", "%{http_code} %{http_version}", g.url("/api/ok"))
    assert r.stdout == b"200 1.1"



POLICY_ROUTES = """
  - name: guarded
    match: {prefix: /guarded}
    upstream: app
    auth: {providers: [keys]}
  - name: limited
    match: {prefix: /limited}
    upstream: app
    rate_limits: [{limit: 2, window: 1m, key: "header:X-Who"}]
  - name: cached
    match: {prefix: /cached}
    upstream: app
    rewrite: /resource
    cache: {ttl: 30s}
  - name: cors
    match: {prefix: /cors}
    upstream: app
    cors: {origins: [https://app.example], methods: [GET, PUT], headers: [X-Trace]}
  - name: packed
    match: {prefix: /packed}
    upstream: app
    rewrite: /big
    compress: {min_bytes: 1}
  - name: blocked
    match: {prefix: /blocked}
    upstream: app
    ip: {deny: [127.0.0.1/32]}
"""


def _answer(url: str, version: str, *args) -> tuple:
    out = curl(version, "-sS", "-i", *args, url).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    names = {line.split(":", 1)[0].lower() for line in lines[1:]}
    # Framing and per-response fields differ by version or by request; the rest must not.
    names -= {"date", "x-request-id", "content-length", "transfer-encoding", "connection", "age"}
    return int(lines[0].split()[1]), names, body


@pytest.mark.parametrize("path,args", [
    ("/guarded/x", ()), ("/guarded/x", ("-H", "X-API-Key: alice-key")),
    ("/limited/x", ("-H", "X-Who: {who}")), ("/cached/x?cc=max-age%3D60", ()),
    ("/cors/x", ("-X", "OPTIONS", "-H", "Origin: https://app.example", "-H", "Access-Control-Request-Method: PUT")),
    ("/packed/x?bytes=5000&ctype=text/plain", ("-H", "Accept-Encoding: gzip")), ("/blocked/x", ()),
])
def test_every_policy_answers_http2_as_http11(gateway_factory, upstream, path, args):
    from tests.integration.conftest import ALICE_API_KEY

    g = gateway_factory(basic_config(upstream.url, extra=ALICE_API_KEY, extra_routes=POLICY_ROUTES))
    answers = {}
    for version in ("--http1.1", "--http2-prior-knowledge"):
        filled = tuple(a.replace("{who}", version) for a in args)
        answers[version] = [_answer(g.url(path), version, *filled) for _ in range(3)]
    one, two = answers["--http1.1"], answers["--http2-prior-knowledge"]
    assert [(s, n) for s, n, _ in one] == [(s, n) for s, n, _ in two]
    if path.startswith("/packed"):
        import gzip

        assert {gzip.decompress(b) for _, _, b in one + two} == {b"x" * 5000}


def test_the_commands_of_docs_http2_work(gateway_factory, upstream):
    """The commands docs/http2.md shows under "Checking it", run as written (the port substituted)."""
    import os
    import re

    from tests.support.processes import ROOT

    g = gateway_factory(f"""
upstreams:
  app: {{targets: ["{upstream.url}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: app}}
""")
    text = open(os.path.join(ROOT, "docs", "http2.md"), encoding="utf-8").read()
    block = re.search(r"## Checking it.*?```sh\n(.*?)```", text, re.S).group(1)
    commands = [c for c in block.splitlines() if c.strip()]
    assert len(commands) == 4
    outputs = []
    for command in commands:
        out = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace("8080", str(g.port))],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        outputs.append(out.stdout)
    assert outputs[0].startswith("HTTP/2 200")
    assert outputs[1].strip() == "1.1"
    assert "1000 succeeded" in outputs[2] and "1000 2xx" in outputs[2]
    assert outputs[3].strip()


def test_request_trailers_reach_the_upstream(setup):
    g, u = setup
    c = RawH2(g.port).start()
    c.request(1, "/api/echo", "POST", end_stream=False)
    c.send(DataFrame(1, b"part one;"), DataFrame(1, b"part two"),
           c.headers_frame(1, [("x-checksum", "abc123")]))
    r = c.response(1)
    assert r.status == 200
    echoed = json.loads(r.body)
    assert echoed["body_len"] == len(b"part one;part two")
    assert echoed["headers"]["x-checksum"] == "abc123"   # a chunked trailer towards HTTP/1.1
    c.close()


def test_a_reader_that_stops_reading_is_cut_off(gateway_factory, upstream):
    """Response bytes queued for a client that takes none for idle_timeout: the connection
    is dropped (the upstream's read_timeout, longer here, would otherwise end the stream)."""
    g = gateway_factory(basic_config(upstream.url, extra="limits: {idle_timeout: 2s}\n").replace(
        "read_timeout: 2s", "read_timeout: 30s"))
    c = RawH2(g.port)
    c.start({SettingsFrame.INITIAL_WINDOW_SIZE: 65535})
    c.request(1, f"/api/big?bytes={64 * 1024 * 1024}")
    time.sleep(4)   # no byte taken past the first window
    got = 0
    while True:
        frame = c.next_frame(2)
        if frame is None:
            break
        if isinstance(frame, DataFrame):
            got += len(frame.data)
            c.responses[1].body = b""
    assert c.closed and got < 16 * 1024 * 1024   # cut off, not served to the end
    still_serving(g)
