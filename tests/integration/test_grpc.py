"""JSON-to-gRPC transcoding through the real gateway against a real grpcio server
(tests/support/grpc_server.py, its descriptors compiled by grpcio-tools here)."""
import json

import pytest

from tests.integration.conftest import ALICE_API_KEY
from tests.support.client import request
from tests.support.processes import refused_port


@pytest.fixture(scope="module")
def shop():
    from tests.support.grpc_server import GrpcServer

    s = GrpcServer().start()
    yield s
    s.stop()


def config(port: int, descriptors: str, extra: str = "") -> str:
    return f"""
{ALICE_API_KEY}
upstreams:
  inventory:
    targets: ["grpc://127.0.0.1:{port}"]
    descriptors: {descriptors}
  down:
    targets: ["grpc://127.0.0.1:{refused_port()}"]
    descriptors: {descriptors}
routes:
  - name: item
    match: {{path: "/v1/items/{{id}}", methods: [GET]}}
    upstream: inventory
    timeout: 500ms
    auth: {{providers: [keys], optional: true}}
    grpc: {{method: shop.Inventory/GetItem, metadata: [X-Tenant]}}
  - name: put
    match: {{path: /v1/items, methods: [POST]}}
    upstream: inventory
    grpc: {{method: shop.Inventory/PutItem}}
  - name: down
    match: {{path: "/down/{{id}}", methods: [GET]}}
    upstream: down
    grpc: {{method: shop.Inventory/GetItem}}
{extra}
"""


@pytest.fixture(scope="module")
def gw(shop, tmp_path_factory):
    from tests.support.processes import Gateway

    g = Gateway(config(shop.port, shop.descriptors)).start()
    yield g
    g.cleanup()


def call(g, method: str, path: str, body: bytes = b"", headers: str = ""):
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return request(g.port, f"{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}{length}\r\n".encode() + body)


def test_a_unary_call_from_path_query_and_body(gw, shop):
    r = call(gw, "GET", "/v1/items/a-1?quantity=3&tags=x&tags=y&apikey=ignored",
             headers="X-API-Key: alice-key\r\nX-Tenant: acme\r\nX-Secret: no\r\n")
    assert r.status == 200 and r.getheader("content-type") == "application/json"
    item = json.loads(r.body)
    assert item["id"] == "a-1" and item["name"] == "item a-1" and item["quantity"] == 3
    assert item["tags"] == ["x", "y"] and item["price"] == 9.5 and item["inStock"] is True
    # Allow-listed headers and the identity headers are metadata; others are not.
    meta = item["metadata"]
    assert meta["x-tenant"] == "acme" and meta["x-consumer-id"] == "alice" and "x-secret" not in meta
    assert meta["x-request-id"] == r.getheader("x-request-id")
    body = json.dumps({"id": "b-2", "name": "put me", "quantity": 7, "tags": ["n"], "inStock": True}).encode()
    r = call(gw, "POST", "/v1/items", body, "Content-Type: application/json\r\n")
    assert r.status == 200
    assert json.loads(r.body) == {"id": "b-2", "name": "put me", "quantity": 7, "tags": ["n"], "metadata": {},
                                  "price": 0.0, "inStock": True}


@pytest.mark.parametrize("code,status", [
    ("NOT_FOUND", 404), ("INVALID_ARGUMENT", 400), ("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403),
    ("RESOURCE_EXHAUSTED", 429), ("UNAVAILABLE", 503), ("DEADLINE_EXCEEDED", 504), ("ALREADY_EXISTS", 409),
    ("FAILED_PRECONDITION", 400), ("UNIMPLEMENTED", 501), ("INTERNAL", 500), ("UNKNOWN", 500), ("DATA_LOSS", 500),
    ("ABORTED", 409), ("OUT_OF_RANGE", 400)])
def test_every_grpc_status_is_mapped_with_a_problem(gw, code, status):
    import grpc

    r = call(gw, "GET", f"/v1/items/status-{code}")
    assert r.status == status
    problem = json.loads(r.body)
    assert r.getheader("content-type") == "application/problem+json"
    assert problem["grpc_status"] == grpc.StatusCode[code].value[0]
    assert problem["grpc_message"] == f"told to answer {code}"


def test_not_found_deadline_and_a_server_that_is_down(gw):
    r = call(gw, "GET", "/v1/items/missing")
    assert r.status == 404 and json.loads(r.body)["grpc_message"] == "no item missing"
    r = call(gw, "GET", "/v1/items/slow")   # the route's 500 ms timeout is the deadline
    assert r.status == 504 and json.loads(r.body)["grpc_status"] == 4
    r = call(gw, "GET", "/down/x")
    assert r.status == 503 and json.loads(r.body)["grpc_status"] == 14


def test_bad_json_and_a_body_that_does_not_fit_name_the_problem(gw):
    r = call(gw, "POST", "/v1/items", b"{not json", "Content-Type: application/json\r\n")
    assert r.status == 400 and "not JSON" in json.loads(r.body)["detail"]
    r = call(gw, "POST", "/v1/items", b'{"quantity": "many"}', "Content-Type: application/json\r\n")
    assert r.status == 400 and "quantity" in json.loads(r.body)["detail"]
    r = call(gw, "POST", "/v1/items", b'{"colour": "red"}', "Content-Type: application/json\r\n")
    assert r.status == 400 and "colour" in json.loads(r.body)["detail"]
    assert call(gw, "GET", "/v1/items/ok-after").status == 200   # and the gateway goes on


def test_config_errors_name_the_key(shop, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(config(shop.port, shop.descriptors, extra="""  - name: streaming
    match: {path: /list}
    upstream: inventory
    grpc: {method: shop.Inventory/ListItems}
  - name: unknown
    match: {path: /nope}
    upstream: inventory
    grpc: {method: shop.Inventory/Nope}
""").replace(f"descriptors: {shop.descriptors}\n  down:", f"descriptors: {shop.descriptors}\n  missing:\n"
                                                           f"    targets: [grpc://127.0.0.1:1]\n"
                                                           f"    descriptors: {tmp_path}/none.pb\n  down:"))
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(bad)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 1
    assert "routes[3].grpc.method" in text and "streaming method" in text
    assert "routes[4].grpc.method" in text and "no method shop.Inventory/Nope" in text
    assert "upstreams.missing.descriptors" in text and "cannot read" in text
