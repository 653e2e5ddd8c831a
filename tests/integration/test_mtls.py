"""Client certificates (docs/auth.md, "Client certificates"): `tls.client_ca` makes the
listener ask for them, an `mtls` provider maps a verified one to a consumer, a route
without one answers 401, a certificate from another CA fails the handshake, the
fingerprint is in the access log, and a reload picks up a changed CA file. The
certificates are made at test time with `cryptography`."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from tests.support.certs import Authority
from tests.support.processes import wait_for

CONFIG = """
tls: {{cert: {d}/server.pem, key: {d}/server.key, client_ca: {d}/trusted.pem}}
access_log: true
consumers:
  - {{id: billing.partner.example, tier: gold, scopes: [invoices:read]}}
tiers:
  gold: {{rate_limits: [{{limit: 100, window: 60s}}]}}
auth:
  providers:
    partners: {{type: mtls, consumer_from: san_dns}}
    by_cn: {{type: mtls, consumer_from: subject_cn}}
    by_uri: {{type: mtls, consumer_from: san_uri}}
    by_print: {{type: mtls, consumer_from: fingerprint}}
upstreams:
  app: {{targets: ["{upstream}"]}}
routes:
  - {{name: partners, match: {{prefix: /partners}}, upstream: app, auth: {{providers: [partners], scopes: [invoices:read]}}}}
  - {{name: cn, match: {{prefix: /cn}}, upstream: app, auth: {{providers: [by_cn]}}}}
  - {{name: uri, match: {{prefix: /uri}}, upstream: app, auth: {{providers: [by_uri]}}}}
  - {{name: print, match: {{prefix: /print}}, upstream: app, auth: {{providers: [by_print]}}}}
  - {{name: open, match: {{prefix: /open}}, upstream: app}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    trusted, other = Authority(d, "trusted-ca"), Authority(d, "other-ca")
    shutil.copy(trusted.path, os.path.join(d, "trusted.pem"))
    server = trusted.issue("server", "127.0.0.1", ips=("127.0.0.1",), client=False)
    os.replace(server[0], os.path.join(d, "server.pem"))
    os.replace(server[1], os.path.join(d, "server.key"))
    return {"dir": d, "trusted": trusted, "other": other,
            "partner": trusted.issue("partner", "partner-cn", dns=("billing.partner.example",),
                                     uris=("spiffe://example/billing",)),
            "stranger": other.issue("stranger", "stranger", dns=("billing.partner.example",))}


def get(g, pki, path, cert=None, http2=False):
    """(status, headers, body) over TLS, with a client certificate (cert, key) or none;
    None when the server refused the handshake."""
    ctx = ssl.create_default_context(cafile=pki["trusted"].path)
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return None
    if not data:
        return None   # TLS 1.3: the refusal of a client certificate arrives after the client's handshake
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(), body


@pytest.fixture
def gw(gateway_factory, upstream, pki):
    return gateway_factory(CONFIG.format(d=pki["dir"], upstream=upstream.url))


def test_a_verified_certificate_names_the_consumer(gw, pki, upstream):
    status, _, body = get(gw, pki, "/partners/invoices", pki["partner"])
    assert status == 200
    seen = upstream.requests[-1]["headers"]
    assert seen["x-consumer-id"] == "billing.partner.example" and seen["x-consumer-tier"] == "gold"
    for path, consumer in (("/cn/x", "partner-cn"), ("/uri/x", "spiffe://example/billing"),
                           ("/print/x", pki["partner"][2])):
        assert get(gw, pki, path, pki["partner"])[0] == 200
        assert upstream.requests[-1]["headers"]["x-consumer-id"] == consumer


def test_no_certificate_on_an_mtls_route_is_401_and_other_routes_need_none(gw, pki):
    status, head, _ = get(gw, pki, "/partners/invoices")
    assert status == 401 and "www-authenticate" in head.lower()
    assert get(gw, pki, "/open/x")[0] == 200


def test_a_certificate_from_another_ca_fails_the_handshake(gw, pki):
    assert get(gw, pki, "/open/x", pki["stranger"]) is None
    assert get(gw, pki, "/partners/x", pki["partner"])[0] == 200   # the gateway serves on


def test_the_fingerprint_is_in_the_access_log(gw, pki):
    get(gw, pki, "/partners/invoices", pki["partner"])
    get(gw, pki, "/partners/invoices")
    wait_for(lambda: gw.stdout().count('"request_id"') >= 2)
    lines = [json.loads(line) for line in gw.stdout().splitlines() if '"request_id"' in line]
    assert lines[-2]["client_cert"] == pki["partner"][2] and lines[-2]["consumer"] == "billing.partner.example"
    assert lines[-1]["client_cert"] is None and lines[-1]["status"] == 401


def test_http2_streams_see_the_certificate(gw, pki):
    out = subprocess.run(["curl", "-s", "--http2", "--cacert", pki["trusted"].path, "--cert", pki["partner"][0],
                          "--key", pki["partner"][1], "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          f"https://127.0.0.1:{gw.port}/partners/invoices"], capture_output=True, text=True, timeout=10)
    assert out.stdout == "2 200"


def test_a_reload_picks_up_a_changed_ca_file(gateway_factory, upstream, pki):
    g = gateway_factory(CONFIG.format(d=pki["dir"], upstream=upstream.url))
    assert get(g, pki, "/partners/x", pki["stranger"]) is None
    # The other CA's certificate is trusted once the CA file holds it and the gateway reloads.
    with open(os.path.join(pki["dir"], "trusted.pem"), "a") as f:
        f.write(open(pki["other"].path).read())
    try:
        g.signal(signal.SIGHUP)
        wait_for(lambda: get(g, pki, "/partners/x", pki["stranger"]) is not None, timeout=5)
        assert get(g, pki, "/partners/x", pki["stranger"])[0] == 200
        # A CA file that cannot be read refuses the reload: the old CAs keep serving.
        os.rename(os.path.join(pki["dir"], "trusted.pem"), os.path.join(pki["dir"], "trusted.bak"))
        g.signal(signal.SIGHUP)
        wait_for(lambda: "tls.client_ca" in g.stderr(), timeout=5)
        assert get(g, pki, "/partners/x", pki["partner"])[0] == 200
    finally:
        if os.path.exists(os.path.join(pki["dir"], "trusted.bak")):
            os.rename(os.path.join(pki["dir"], "trusted.bak"), os.path.join(pki["dir"], "trusted.pem"))
        shutil.copy(pki["trusted"].path, os.path.join(pki["dir"], "trusted.pem"))


def test_an_mtls_route_without_client_ca_is_a_config_error(tmp_path, upstream, pki):
    import sys

    from tests.support.processes import ROOT

    config = tmp_path / "g.yaml"
    config.write_text(CONFIG.format(d=pki["dir"], upstream=upstream.url).replace(
        f", client_ca: {pki['dir']}/trusted.pem", ""))
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(config)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    assert out.returncode != 0 and "routes[0].auth.providers[0]" in out.stderr + out.stdout
    assert "tls.client_ca" in out.stderr + out.stdout
