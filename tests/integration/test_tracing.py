"""OpenTelemetry traces from the real gateway into a real OTLP/HTTP receiver (protobuf decoded)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.client import request
from tests.support.processes import refused_port, wait_for

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP traces endpoint that keeps what it is sent."""

    def __init__(self):
        self.spans = []
        self.resource = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.headers["content-type"] == "application/x-protobuf"
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    collector.resource.append({a.key: a.value.string_value for a in rs.resource.attributes})
                    for ss in rs.scope_spans:
                        collector.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.stop()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.int_value if v.HasField("int_value") else v.bool_value if v.HasField("bool_value") \
            else v.string_value
    return out


def config(upstream_url: str, endpoint: str, dead: str) -> str:
    return f"""
tracing:
  endpoint: {endpoint}
  service_name: edge
  sampler: {{type: parent_based, ratio: 1.0}}
upstreams:
  app: {{targets: ["{upstream_url}"]}}
  gone:
    targets: ["{dead}"]
    connect_timeout: 200ms
    retries: {{attempts: 2, on: [connect_error]}}
routes:
  - name: user
    match: {{path: "/users/{{id}}"}}
    upstream: app
    rate_limits: [{{limit: 100, window: 1m}}]
  - name: failing
    match: {{prefix: /failing}}
    upstream: app
    rewrite: /status/503
  - name: gone
    match: {{prefix: /gone}}
    upstream: gone
"""


def get(g, path, headers=""):
    return request(g.port, f"GET {path} HTTP/1.1\r\nHost: api.test:8080\r\n{headers}\r\n".encode())


def test_spans_follow_the_http_conventions_and_the_trace_context(gateway_factory, upstream, collector):
    dead = f"http://127.0.0.1:{refused_port()}"
    g = gateway_factory(config(upstream.url, collector.url, dead))
    traced = get(g, "/users/7", f"traceparent: 00-{CLIENT_TRACE}-{CLIENT_PARENT}-01\r\n")
    assert traced.status == 200
    sent_upstream = json.loads(traced.body)["headers"]["traceparent"]
    unsampled = get(g, "/users/8", f"traceparent: 00-{CLIENT_TRACE}-{CLIENT_PARENT}-00\r\n")
    assert json.loads(unsampled.body)["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"
    assert get(g, "/failing/x").status == 503
    assert get(g, "/gone/x").status == 502
    wait_for(lambda: len(collector.spans) >= 7, timeout=10)
    time.sleep(0.6)   # one more batch: nothing else arrives
    assert collector.resource[0]["service.name"] == "edge"
    servers = [s for s in collector.spans if s.kind == 2]
    clients = [s for s in collector.spans if s.kind == 3]
    assert sorted(s.name for s in servers) == ["GET /failing/*", "GET /gone/*", "GET /users/{id}"]
    assert len(clients) == 4   # users, failing, gone twice (the retry)

    user = next(s for s in servers if s.name == "GET /users/{id}")
    assert user.trace_id.hex() == CLIENT_TRACE and user.parent_span_id.hex() == CLIENT_PARENT
    a = attrs(user)
    assert a["http.request.method"] == "GET" and a["http.route"] == "/users/{id}" and a["url.path"] == "/users/7"
    assert a["http.response.status_code"] == 200 and a["client.address"] == "127.0.0.1"
    assert a["server.address"] == "api.test" and a["server.port"] == 8080
    assert a["tollhouse.route"] == "user" and a["tollhouse.ratelimit.decision"] == "allowed"
    assert user.status.code == 0 and [e.name for e in user.events] == ["ratelimit"]
    (attempt,) = [s for s in clients if s.parent_span_id == user.span_id]
    assert attempt.trace_id == user.trace_id
    assert sent_upstream == f"00-{CLIENT_TRACE}-{attempt.span_id.hex()}-01"   # the CLIENT span is the parent
    assert attrs(attempt)["http.response.status_code"] == 200 and "http.request.resend_count" not in attrs(attempt)

    failing = next(s for s in servers if s.name == "GET /failing/*")
    assert failing.status.code == 2 and attrs(failing)["http.response.status_code"] == 503   # 5xx: an error
    assert len(failing.trace_id) == 16 and failing.trace_id.hex() != CLIENT_TRACE and not failing.parent_span_id

    gone = next(s for s in servers if s.name == "GET /gone/*")
    tries = sorted((s for s in clients if s.parent_span_id == gone.span_id), key=lambda s: s.start_time_unix_nano)
    assert [attrs(s).get("http.request.resend_count") for s in tries] == [None, 1]   # set on retries only
    assert all(attrs(s)["error.type"] == "connect_error" and s.status.code == 2 for s in tries)


def test_a_collector_that_is_down_loses_spans_never_requests(gateway_factory, upstream):
    dead = f"http://127.0.0.1:{refused_port()}"
    g = gateway_factory(config(upstream.url, f"{dead}/v1/traces", dead))
    assert [get(g, f"/users/{i}").status for i in range(20)] == [200] * 20
    time.sleep(1.2)   # a failed export or two
    assert get(g, "/users/21").status == 200
    assert "trace collector" in g.stderr()


def test_each_aggregation_backend_is_a_client_span_of_the_request(gateway_factory, upstream, collector):
    cfg = config(upstream.url, collector.url, f"http://127.0.0.1:{refused_port()}") + """
  - name: both
    match: {path: /both}
    aggregate:
      backends:
        one: {upstream: app, path: /one}
        two: {upstream: app, path: /two}
"""
    g = gateway_factory(cfg)
    r = get(g, "/both")
    assert r.status == 200
    wait_for(lambda: len(collector.spans) >= 3, timeout=10)
    (server,) = [s for s in collector.spans if s.kind == 2]
    assert server.name == "GET /both"
    clients = sorted((s for s in collector.spans if s.kind == 3), key=lambda s: attrs(s)["tollhouse.backend"])
    assert [attrs(s)["tollhouse.backend"] for s in clients] == ["one", "two"]
    assert all(s.parent_span_id == server.span_id and s.trace_id == server.trace_id for s in clients)
    body = json.loads(r.body)
    # Each backend's traceparent names its own CLIENT span as the parent.
    for s, name in zip(clients, ("one", "two")):
        assert body[name]["headers"]["traceparent"] == f"00-{server.trace_id.hex()}-{s.span_id.hex()}-01"
    assert attrs(clients[0])["url.full"].endswith("/one")


def test_a_split_routes_server_span_names_the_side_that_served(gateway_factory, upstream, collector):
    cfg = config(upstream.url, collector.url, f"http://127.0.0.1:{refused_port()}") + """
  - name: shop
    match: {prefix: /shop}
    split: [{upstream: gone, weight: 0}, {upstream: app, weight: 1}]
"""
    g = gateway_factory(cfg)
    assert get(g, "/shop/x").status == 200
    wait_for(lambda: any(s.kind == 2 for s in collector.spans), timeout=10)
    (server,) = [s for s in collector.spans if s.kind == 2]
    assert attrs(server)["tollhouse.split.upstream"] == "app" and attrs(server)["tollhouse.route"] == "shop"


def test_the_server_span_names_the_protocol_version(gateway_factory, upstream, collector):
    import subprocess

    g = gateway_factory(config(upstream.url, collector.url, f"http://127.0.0.1:{refused_port()}"))
    assert get(g, "/users/1").status == 200
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}",
                          f"http://127.0.0.1:{g.port}/users/2"], capture_output=True, timeout=10)
    assert out.stdout == b"2"
    wait_for(lambda: len([s for s in collector.spans if s.kind == 2]) >= 2, timeout=10)
    versions = {attrs(s)["url.path"]: attrs(s)["network.protocol.version"] for s in collector.spans if s.kind == 2}
    assert versions == {"/users/1": "1.1", "/users/2": "2"}


def test_each_graphql_plan_step_is_a_span_over_its_subgraph_fetches(gateway_factory, upstream, collector, tmp_path):
    from tests.support.shop_subgraphs import Shop

    shop = Shop().start()
    try:
        (tmp_path / "shop.graphql").write_text(shop.supergraph())
        cfg = config(upstream.url, collector.url, f"http://127.0.0.1:{refused_port()}") + f"""
  - name: graph
    match: {{path: /graphql}}
    graphql: {{supergraph: {tmp_path / "shop.graphql"}}}
"""
        g = gateway_factory(cfg)
        query = json.dumps({"query": "{ me { name reviews { body product { name inStock } } } }"})
        r = request(g.port, (f"POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(query)}\r\n\r\n{query}").encode())
        assert r.status == 200 and "errors" not in json.loads(r.body)
        # accounts (me), then reviews (User.reviews), then products and inventory (Product.name, .inStock).
        wait_for(lambda: len([s for s in collector.spans if s.kind == 3]) >= 4, timeout=10)
    finally:
        shop.stop()
    (server,) = [s for s in collector.spans if s.kind == 2]
    steps = sorted((s for s in collector.spans if s.kind == 1), key=lambda s: attrs(s)["tollhouse.graphql.step"])
    assert [s.name for s in steps] == ["graphql step"] * 3
    assert [attrs(s)["tollhouse.graphql.subgraphs"] for s in steps] == ["accounts", "reviews", "inventory,products"]
    assert [attrs(s)["tollhouse.graphql.kind"] for s in steps] == ["root", "entities", "entities"]
    assert all(s.parent_span_id == server.span_id for s in steps)
    # Each subgraph fetch is a CLIENT span under its step, and the steps follow one another.
    by_id = {s.span_id: s for s in steps}
    clients = [s for s in collector.spans if s.kind == 3]
    assert sorted(attrs(by_id[c.parent_span_id])["tollhouse.graphql.subgraphs"] for c in clients) == [
        "accounts", "inventory,products", "inventory,products", "reviews"]
    assert all(a.end_time_unix_nano <= b.start_time_unix_nano for a, b in zip(steps, steps[1:]))
