"""Signals, reloads, workers, admin, TLS and the store, with the real gateway process."""
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.integration.conftest import basic_config
from tests.support.client import RawClient, request
from tests.support.processes import RedisServer, wait_for
from tests.support.upstream import Upstream


def get(port, target, headers=""):
    return request(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())


def test_sigterm_drains_in_flight_requests_and_exits_0(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra="shutdown_grace: 5s"))
    result = {}

    def slow():
        result["r"] = get(g.port, "/api/slow?ms=800")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    g.signal(signal.SIGTERM)
    t.join(5)
    assert result["r"].status == 200 and result["r"].body == b"slow"
    assert g.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", g.port), timeout=0.5)


def test_sigterm_gives_up_after_shutdown_grace(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra="shutdown_grace: 300ms"))
    c = RawClient(g.port)
    c.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    assert g.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3
    c.close()


EXTRA_ROUTE = """  - name: added
    match: {prefix: /added}
    upstream: app
    rewrite: /was-added
"""


def test_sighup_reloads_a_valid_config_and_keeps_the_old_on_errors(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url))
    assert json.loads(get(g.port, "/added").body)["target"] == "/added"   # caught by the catch-all
    g.write_config(basic_config(upstream.url, extra_routes=EXTRA_ROUTE))
    g.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(get(g.port, "/added").body)["target"] == "/was-added", timeout=5)
    g.write_config(basic_config(upstream.url, extra_routes=EXTRA_ROUTE) + "\nbogus_key: 1\n")
    g.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert json.loads(get(g.port, "/added").body)["target"] == "/was-added"
    assert "bogus_key" in g.stderr()
    assert g.proc.poll() is None


def _cpu_seconds(pid: int, seconds: float) -> float:
    """CPU seconds (user + system) the process `pid` and its children use over `seconds`."""
    def total() -> float:
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == pid or int(fields[1]) == pid:   # fields[1]: the parent's pid
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    before = total()
    time.sleep(seconds)
    return total() - before


def test_busy_polling_keeps_an_idle_worker_polling_until_a_reload_turns_it_off(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url, extra="busy_polling: true"))
    assert json.loads(get(g.port, "/polled").body)["target"] == "/polled"
    # No request in flight, yet the worker polls: most of a core's time over 1.5 s.
    assert _cpu_seconds(g.proc.pid, 1.5) > 0.5
    g.write_config(basic_config(upstream.url))
    g.signal(signal.SIGHUP)
    # Turned off by the reload: the idle worker sleeps in the poller again.
    wait_for(lambda: _cpu_seconds(g.proc.pid, 0.5) < 0.1, timeout=10)
    assert json.loads(get(g.port, "/slept").body)["target"] == "/slept"


def test_admin_reload_needs_the_token_and_reports_errors(gateway_factory, upstream):
    cfg = basic_config(upstream.url, extra="admin: {listen: '127.0.0.1:{admin_port}', token: s3cret}")
    g = gateway_factory(cfg)
    assert g.get_admin("/reload", "POST")[0] == 401
    assert g.get_admin("/status")[0] == 401
    assert g.get_admin("/metrics")[0] == 200 and g.get_admin("/readyz")[0] == 200
    g.write_config(cfg.replace("read_timeout: 2s", "read_timeout: 2x"))
    status, body = g.get_admin("/reload", "POST", token="s3cret")
    assert status == 400
    errors = json.loads(body)["errors"]
    assert any("upstreams.app.read_timeout" in e and "line" in e for e in errors)
    assert get(g.port, "/x").status == 200
    g.write_config(basic_config(upstream.url, extra_routes=EXTRA_ROUTE,
                                extra="admin: {listen: '127.0.0.1:{admin_port}', token: s3cret}"))
    assert g.get_admin("/reload", "POST", token="s3cret")[0] == 200
    assert json.loads(get(g.port, "/added").body)["target"] == "/was-added"
    status, body = g.get_admin("/status", token="s3cret")
    st = json.loads(body)
    assert status == 200 and st["workers"][0]["config_version"] == 2
    assert {r["name"] for r in st["routes"]} >= {"added", "api"}
    assert st["upstreams"]["app"]["targets"][0]["url"] == upstream.url


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_workers_share_the_port_and_metrics_cover_all_of_them(gateway_factory):
    u = Upstream().start()
    try:
        g = gateway_factory(basic_config(u.url), workers=2)
        wait_for(lambda: len(json.loads(g.get_admin("/status")[1])["workers"]) == 2)
        for _ in range(60):
            assert get(g.port, "/api/x").status == 200
        status = json.loads(g.get_admin("/status")[1])
        assert len({w["pid"] for w in status["workers"]}) == 2
        text = g.get_admin("/metrics")[1].decode()
        assert _metric(text, "tollhouse_requests_total", route="api", status="200") == 60
        assert _metric(text, "tollhouse_workers") == 2
        assert _metric(text, "tollhouse_request_duration_seconds_count", route="api") == 60
        assert _metric(text, "tollhouse_upstream_duration_seconds_count", upstream="app") == 60
        # SO_REUSEPORT spread the connections: the upstream saw both workers' pools.
        assert u.connections >= 2
        g.signal(signal.SIGTERM)
        assert g.proc.wait(15) == 0
    finally:
        u.stop()


def test_worker_that_dies_is_restarted(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url), workers=2)
    pids = [w["pid"] for w in json.loads(g.get_admin("/status")[1])["workers"]]
    import os
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: len(json.loads(g.get_admin("/status")[1])["workers"]) == 2
             and pids[0] not in [w["pid"] for w in json.loads(g.get_admin("/status")[1])["workers"]], timeout=15)
    assert get(g.port, "/x").status == 200


@pytest.mark.parametrize("mode,serves", [("open", True), ("local", True), ("closed", False)])
def test_readyz_with_the_store_down_follows_store_failure(gateway_factory, upstream, mode, serves):
    """Ready when the store answers, or when store_failure says to serve without it."""
    redis = RedisServer().start()
    try:
        g = gateway_factory(basic_config(upstream.url, extra=f"store: {redis.url}\nstore_failure: {mode}"))
        assert g.get_admin("/readyz")[0] == 200
        redis.kill()
        expected = 200 if serves else 503
        wait_for(lambda: (s := g.get_admin("/readyz")) and json.loads(s[1])["up"] is False, timeout=5)
        status, body = g.get_admin("/readyz")
        assert status == expected and json.loads(body)["store_failure"] == mode
        assert get(g.port, "/x").status == 200   # proxying does not depend on the store
        redis.start()
        wait_for(lambda: g.get_admin("/readyz")[0] == 200 and json.loads(g.get_admin("/readyz")[1])["up"], timeout=10)
    finally:
        redis.cleanup()


def test_readyz_is_never_true_before_the_listeners_are_bound(gateway_factory, upstream):
    g = gateway_factory(basic_config(upstream.url), start=False)
    seen, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            try:
                status = g.get_admin("/readyz")[0]
            except OSError:
                status = None   # the admin listener is not up yet: not ready
            if status == 200:
                with socket.create_connection(("127.0.0.1", g.port), timeout=1):
                    seen.append("ready and bound")
            else:
                seen.append(status)
            time.sleep(0.005)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    g.start()
    wait_for(lambda: "ready and bound" in seen, timeout=10)
    stop.set()
    t.join(5)
    assert seen[0] != "ready and bound"   # probed from before the start


@pytest.mark.parametrize("workers", [None, 2])
def test_drain_fails_readiness_first_then_finishes_in_flight_requests(gateway_factory, upstream, workers):
    g = gateway_factory(basic_config(upstream.url, extra="shutdown_grace: 5s"), workers=workers)
    assert g.get_admin("/readyz")[0] == 200
    answers = []
    slow = threading.Thread(target=lambda: answers.append(get(g.port, "/api/slow?ms=1500").status))
    slow.start()
    time.sleep(0.3)   # in flight
    g.signal(signal.SIGTERM)
    status, body = wait_for(lambda: (s := g.get_admin("/readyz")) and s[0] == 503 and s, timeout=3)
    assert json.loads(body)["draining"] is True and not answers   # not ready while the request is still out
    slow.join(10)
    assert answers == [200]
    assert g.proc.wait(15) == 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return d


def test_tls_termination(gateway_factory, upstream, certs):
    g = gateway_factory(basic_config(upstream.url, extra=f"tls: {{cert: {certs}/cert.pem, key: {certs}/key.pem}}"))
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    with urllib.request.urlopen(f"https://127.0.0.1:{g.port}/api/hello", context=ctx, timeout=5) as r:
        body = json.loads(r.read())
    assert body["target"] == "/hello"
    assert body["headers"]["x-forwarded-proto"] == "https"


def _tls_client(certs, **settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    for name, value in settings.items():
        if name == "ciphers":
            ctx.set_ciphers(value)
        elif name == "curve":
            ctx.set_ecdh_curve(value)
        else:
            setattr(ctx, name, value)
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """The negotiated (version, cipher), or None when the server refused the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return f"{s.version()} {s.cipher()[0]}"
        except ssl.SSLError:
            return None


def test_tls_defaults_to_mozilla_intermediate(gateway_factory, upstream, certs):
    """TLS 1.0/1.1, CBC suites, RSA key exchange and curves outside X25519, P-256 and
    P-384 are refused; TLS 1.2 AEAD and TLS 1.3 are served (issue 16, defect 10)."""
    g = gateway_factory(basic_config(upstream.url, extra=f"tls: {{cert: {certs}/cert.pem, key: {certs}/key.pem}}"))
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    assert _handshake(g.port, _tls_client(certs)).startswith("TLSv1.3")
    assert _handshake(g.port, _tls_client(certs, **tls12, ciphers="ECDHE-RSA-AES128-GCM-SHA256")) \
        == "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"
    assert _handshake(g.port, _tls_client(certs, **tls12, curve="secp384r1")) is not None
    for weak in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256", "AES256-SHA"):
        assert _handshake(g.port, _tls_client(certs, **tls12, ciphers=weak + ":@SECLEVEL=0")) is None, weak
    assert _handshake(g.port, _tls_client(certs, **tls12, curve="secp521r1")) is None
    assert _handshake(g.port, _tls_client(certs, maximum_version=ssl.TLSVersion.TLSv1_3, curve="secp521r1")) is None


def test_tls_modern_profile_is_tls13_only(gateway_factory, upstream, certs):
    g = gateway_factory(basic_config(upstream.url, extra=f"tls: {{cert: {certs}/cert.pem, key: {certs}/key.pem, "
                                                         "profile: modern}"))
    assert _handshake(g.port, _tls_client(certs)).startswith("TLSv1.3")
    assert _handshake(g.port, _tls_client(certs, maximum_version=ssl.TLSVersion.TLSv1_2)) is None


def test_https_upstream(gateway_factory, certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    u = Upstream(ssl=ctx).start()
    try:
        cfg = basic_config(u.url).replace("    read_timeout: 2s", f"    read_timeout: 2s\n    ca_file: {certs}/cert.pem")
        g = gateway_factory(cfg)
        r = get(g.port, "/api/secure")
        assert r.status == 200 and json.loads(r.body)["target"] == "/secure"
        bad = gateway_factory(basic_config(u.url))   # no CA given: verification fails -> 502
        assert get(bad.port, "/api/secure").status == 502
    finally:
        u.stop()


def test_check_command_prints_every_error_with_path_and_line(tmp_path):
    import sys
    from tests.support.processes import ROOT

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""listen: 0.0.0.0:8080
limits: {header_timeout: soon}
upstreams:
  users:
    targets: [ftp://nowhere]
routes:
  - match: {prefix: /a}
    upstream: users
    cache:
      ttl: soon
    grpc: {}
  - match: {prefix: /b, methodz: [GET]}
    upstream: users
regions: {name: eu}
""")
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(cfg)], capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}/src", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    err = out.stderr
    assert "limits.header_timeout (line 2)" in err
    assert "upstreams.users.targets[0].url (line 5)" in err
    assert "routes[0].cache.ttl (line 10)" in err
    assert "routes[0].grpc.method (line 11)" in err and "is required" in err
    assert "regions.peers (line 14)" in err and "is required" in err
    assert "routes[1].match.methodz (line 12)" in err and "did you mean 'methods'" in err
    good = tmp_path / "good.yaml"
    good.write_text("upstreams: {u: {targets: [http://127.0.0.1:1]}}\nroutes: [{match: {prefix: /}, upstream: u}]\n")
    ok = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(good)], capture_output=True, text=True,
                        env={"PYTHONPATH": f"{ROOT}/src", "PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr


def test_check_warns_when_an_exact_path_with_policies_is_shadowed_by_its_slash_form(tmp_path):
    """An exact `path: /secret/admin` does not cover /secret/admin/ (nor /secret/admin/.):
    a catch-all would serve them without the auth (issue 16, defect 13)."""
    import sys
    from tests.support.processes import ROOT

    cfg = tmp_path / "shadowed.yaml"
    cfg.write_text("""upstreams: {u: {targets: [http://127.0.0.1:1]}}
auth: {providers: {dev: {type: jwt, algorithms: [HS256], secret: a-secret-of-enough-length-0123456789}}}
routes:
  - name: admin
    match: {path: /secret/admin}
    upstream: u
    auth: {providers: [dev]}
  - name: open
    match: {path: /open}
    upstream: u
  - name: rest
    match: {prefix: /}
    upstream: u
""")
    env = {"PYTHONPATH": f"{ROOT}/src", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(cfg)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "warning: routes[0].match.path (line 5): /secret/admin/ is served by route 'rest'" in out.stderr
    assert "without this route's auth" in out.stderr
    assert "routes[1]" not in out.stderr   # no policies of its own: nothing to skip
    assert "1 warning(s)" in out.stdout
    cfg.write_text(cfg.read_text().replace("  - name: rest\n", "  - name: slash\n    match: {path: /secret/admin/}\n"
                                           "    upstream: u\n    auth: {providers: [dev]}\n  - name: rest\n"))
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(cfg)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


def test_status_lists_the_gateways_own_endpoints(gateway_factory, upstream, tmp_path):
    """/status answered 500 with auth.token_endpoint set: its routes have no upstream (issue 16, defect 5)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "signing.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    g = gateway_factory(basic_config(upstream.url, extra=f"""auth:
  token_endpoint: {{issuer: https://gw.example, signing_key: {key}}}
"""))
    status, body = g.get_admin("/status")
    assert status == 200, body
    routes = {r["name"]: r for r in json.loads(body)["routes"]}
    assert routes["api"]["upstream"] == "app"
    assert [r["upstream"] for r in routes.values() if r["path"] == "/oauth/token"] == [None]
