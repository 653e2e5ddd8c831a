"""gRPC passthrough (docs/http2.md): grpcio clients call a real grpcio server through the
gateway, over HTTP/2 both ways; every kind of call passes unchanged, trailers included,
and the gateway's own refusals are gRPC answers."""
import json
import time

import pytest

from tests.integration.conftest import ALICE_API_KEY
from tests.support.h2raw import DataFrame, RawH2

grpc = pytest.importorskip("grpc")


@pytest.fixture(scope="module")
def shop():
    from tests.support.grpc_server import GrpcServer

    s = GrpcServer().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def messages(shop):
    return shop._messages()


@pytest.fixture(scope="module")
def gw(shop):
    from tests.support.processes import Gateway

    g = Gateway(f"""
{ALICE_API_KEY}
access_log: true
upstreams:
  inventory:
    protocol: grpc
    targets: ["grpc://127.0.0.1:{shop.port}"]
    read_timeout: 5s
routes:
  - name: guarded
    match: {{path: /shop.Inventory/PutItem}}
    upstream: inventory
    auth: {{providers: [keys]}}
  - name: limited
    match: {{path: /shop.Inventory/SumItems}}
    upstream: inventory
    rate_limits: [{{limit: 3, window: 1m, key: header:X-Client}}]
  - name: inventory
    match: {{prefix: /shop.Inventory/}}
    upstream: inventory
    timeout: 10s
""").start()
    yield g
    g.cleanup()


def channel(g):
    return grpc.insecure_channel(f"127.0.0.1:{g.port}")


def stub(ch, messages, name, kind, request="GetItemRequest", response="Item"):
    make = getattr(ch, kind)
    return make(f"/shop.Inventory/{name}", request_serializer=messages[request].SerializeToString,
                response_deserializer=messages[response].FromString)


def test_unary_call_passes_with_metadata_and_trailers(gw, shop, messages):
    with channel(gw) as ch:
        get = stub(ch, messages, "GetItem", "unary_unary")
        item, call = get.with_call(messages["GetItemRequest"](id="7", quantity=3, tags=["a"]),
                                   metadata=(("x-tenant", "acme"),), timeout=5)
    assert item.id == "7" and item.quantity == 3 and list(item.tags) == ["a"]
    assert item.metadata["x-tenant"] == "acme"
    assert item.metadata["x-forwarded-for"] == "127.0.0.1"   # a proxied request like any other
    assert ("x-served-by", "grpc-test") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_a_grpc_error_passes_unchanged(gw, messages):
    with channel(gw) as ch:
        get = stub(ch, messages, "GetItem", "unary_unary")
        with pytest.raises(grpc.RpcError) as e:
            get(messages["GetItemRequest"](id="missing"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "no item missing"


def test_server_streaming(gw, messages):
    with channel(gw) as ch:
        listing = stub(ch, messages, "ListItems", "unary_stream", request="ListRequest")
        items = list(listing(messages["ListRequest"](prefix="count:500"), timeout=10))
    assert [i.id for i in items] == [f"item-{i}" for i in range(500)]


def test_client_streaming(gw, messages):
    with channel(gw) as ch:
        total = stub(ch, messages, "SumItems", "stream_unary", request="Item")
        answer = total(iter([messages["Item"](id=str(i), quantity=i) for i in range(100)]), timeout=10)
    assert answer.id == "sum of 100" and answer.quantity == sum(range(100))


def test_bidirectional_streaming_interleaves(gw, messages):
    import queue
    import threading

    outgoing: queue.Queue = queue.Queue()

    def requests():
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    with channel(gw) as ch:
        echo = stub(ch, messages, "EchoItems", "stream_stream", request="Item")
        replies = echo(requests(), timeout=10)
        got = []
        for i in range(20):
            outgoing.put(messages["Item"](id=str(i), quantity=i))
            got.append(next(replies))   # each answer arrives before the next request is sent
        outgoing.put(None)
        assert list(replies) == []
    assert [g.id for g in got] == [f"echo {i}" for i in range(20)]
    _ = threading


def test_refusals_are_trailers_only_grpc_answers(gw, messages):
    with channel(gw) as ch:
        put = stub(ch, messages, "PutItem", "unary_unary", request="Item")
        with pytest.raises(grpc.RpcError) as e:
            put(messages["Item"](id="x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert put(messages["Item"](id="x"), metadata=(("x-api-key", "alice-key"),), timeout=5).id == "x"
        total = stub(ch, messages, "SumItems", "stream_unary", request="Item")
        codes = []
        for _ in range(5):
            try:
                total(iter([messages["Item"](quantity=1)]), metadata=(("x-client", "counted"),), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        assert codes[:3] == [grpc.StatusCode.OK] * 3
        assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        missing = ch.unary_unary("/nowhere.Service/Call")
        with pytest.raises(grpc.RpcError) as e:
            missing(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED   # 404: no route


def test_grpc_timeout_is_the_deadline(gw, messages):
    """The client's grpc-timeout (300 ms) is shorter than the route's 10 s: the gateway
    answers DEADLINE_EXCEEDED itself when it passes (a raw client, so that its own
    deadline cannot answer first)."""
    c = RawH2(gw.port).start()
    body = messages["GetItemRequest"](id="slow").SerializeToString()
    c.request(1, "/shop.Inventory/GetItem", "POST", extra=[
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")], end_stream=False)
    started = time.monotonic()
    c.send(DataFrame(1, b"\x00" + len(body).to_bytes(4, "big") + body, flags=["END_STREAM"]))
    r = c.response(1, timeout=5)
    waited = time.monotonic() - started
    assert r.status == 200 and r.header("grpc-status") == "4", (r.status, r.headers)
    assert 0.25 < waited < 1.5
    c.close()


def test_status_in_the_access_log_and_metrics(gw, messages):
    with channel(gw) as ch:
        get = stub(ch, messages, "GetItem", "unary_unary")
        with pytest.raises(grpc.RpcError):
            get(messages["GetItemRequest"](id="status-PERMISSION_DENIED"), timeout=5)
        # Its own refusal by the gateway: under xdist the module's other tests may run in another worker.
        put = stub(ch, messages, "PutItem", "unary_unary", request="Item")
        with pytest.raises(grpc.RpcError):
            put(messages["Item"](id="x"), timeout=5)
    time.sleep(1.2)
    lines = [json.loads(x) for x in gw.stdout().splitlines() if x.startswith("{")]
    denied = [x for x in lines if x["grpc_status"] == 7]
    assert denied and denied[-1]["protocol"] == "HTTP/2" and denied[-1]["status"] == 200
    assert any(x["grpc_status"] == 16 and x["status"] == 401 for x in lines)   # the gateway's refusal
    status, metrics = gw.get_admin("/metrics")
    text = metrics.decode()
    assert 'tollhouse_grpc_responses_total{grpc_status="7",route="inventory"}' in text
    assert 'tollhouse_grpc_responses_total{grpc_status="16",route="guarded"}' in text
