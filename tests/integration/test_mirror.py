"""Request mirroring through the real gateway, to real upstreams (docs/releases.md)."""
import hashlib
import json
import time

from tests.support.client import request
from tests.support.processes import wait_for
from tests.support.upstream import Upstream


def config(main, shadow, mirror: str) -> str:
    return f"""
upstreams:
  main: {{targets: ["{main.url}"]}}
  shadow: {{targets: ["{shadow.url}"], read_timeout: 30s}}
routes:
  - name: shop
    match: {{prefix: /shop}}
    upstream: main
    mirror: {mirror}
"""


def post(g, body: bytes):
    return request(g.port, b"POST /shop/orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body), "POST")


def test_a_copy_goes_to_the_mirror_with_its_body_and_its_answer_is_discarded(gateway_factory):
    main, shadow = Upstream().start(), Upstream(fail_with=503).start()
    try:
        g = gateway_factory(config(main, shadow, "{upstream: shadow, percent: 100}"))
        body = json.dumps({"items": list(range(2000))}).encode()
        r = post(g, body)
        assert r.status == 200 and json.loads(r.body)["port"] == main.port   # the mirror's 503 is not seen
        wait_for(lambda: len(shadow.requests) == 1, timeout=5)
        copy = shadow.requests[0]
        assert copy["method"] == "POST" and copy["target"] == "/shop/orders?x=1"
        assert copy["headers"]["x-tollhouse-mirror"] == "1"
        assert copy["sha256"] == hashlib.sha256(body).hexdigest() == main.requests[-1]["sha256"]
        assert "x-tollhouse-mirror" not in main.requests[-1]["headers"]
    finally:
        main.stop()
        shadow.stop()


def test_a_hanging_mirror_never_delays_the_caller_and_its_excess_is_dropped(gateway_factory):
    main, shadow = Upstream().start(), Upstream(delay=20).start()
    try:
        g = gateway_factory(config(main, shadow, "{upstream: shadow, percent: 100, max_in_flight: 2}"))
        started = time.monotonic()
        statuses = [post(g, b'{"n": %d}' % i).status for i in range(10)]
        assert statuses == [200] * 10
        assert time.monotonic() - started < 5   # a copy waits 20 s on the mirror; the caller never does
        text = g.get_admin("/metrics")[1].decode()
        assert 'tollhouse_mirror_dropped_total{route="shop"} 8.0' in text
        assert 'tollhouse_mirror_requests_total{route="shop"} 2.0' in text
    finally:
        main.stop()
        shadow.stop()


def test_a_share_of_requests_is_copied(gateway_factory):
    main, shadow = Upstream().start(), Upstream().start()
    try:
        g = gateway_factory(config(main, shadow, "{upstream: shadow, percent: 25}"))
        for _ in range(200):
            assert request(g.port, b"GET /shop/x HTTP/1.1\r\nHost: a\r\n\r\n").status == 200
        time.sleep(0.5)
        # 200 draws at p = 0.25: mean 50, sd 6.1; six sd either way.
        assert 13 <= len(shadow.requests) <= 87, len(shadow.requests)
    finally:
        main.stop()
        shadow.stop()
