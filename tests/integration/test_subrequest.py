"""The subrequest API (tollhouse.exchange.subrequest) in a real worker, against real upstream servers."""
import asyncio
import json

import pytest

from tests.support.processes import free_port, refused_port
from tests.support.upstream import Upstream
from tollhouse.config import load_text
from tollhouse.server.worker import Worker
from tollhouse.exchange.subrequest import subrequest


def config(targets, extra=""):
    quoted = ", ".join(f'"{t}"' for t in targets)
    return f"""
listen: 127.0.0.1:{free_port()}
access_log: false
upstreams:
  app:
    targets: [{quoted}]
    connect_timeout: 300ms
{extra}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: app}}
"""


def run(text, scenario):
    """Start a worker on `text`, run `scenario(worker)`, drain."""
    cfg, errors = load_text(text)
    assert not errors, errors

    async def main():
        worker = Worker(cfg, None, asyncio.get_running_loop())
        await worker.start(reuse_port=False)
        try:
            return await scenario(worker)
        finally:
            await worker.drain(grace=0.5)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def origin():
    u = Upstream().start()
    yield u
    u.stop()


def test_a_subrequest_goes_through_the_pool_and_returns_the_answer(origin):
    async def scenario(worker):
        got = await subrequest(worker, "app", b"GET", b"/things/7?a=1", headers=[b"x-extra: yes\r\n"])
        again = await subrequest(worker, "app", b"POST", b"/upload", body=b"x" * 1000)
        target = worker.state.pools["app"].targets[0]
        return got, again, (target.open, len(target.idle))

    got, again, connections = run(config([origin.url]), scenario)
    assert got.status == 200 and not got.local
    echo = json.loads(got.body)
    assert echo["target"] == "/things/7?a=1" and echo["headers"]["x-extra"] == "yes"
    assert echo["headers"]["x-forwarded-for"] == "127.0.0.1" and echo["headers"]["x-request-id"]
    assert got.header("Content-Type") == "application/json"
    assert again.status == 200 and json.loads(again.body)["length"] == 1000
    assert connections == (1, 1)   # one warm connection, reused


def test_failures_are_answered_as_the_gateway_answers_them(origin):
    dead = f"http://127.0.0.1:{refused_port()}"

    async def scenario(worker):
        refused = await subrequest(worker, "app", b"GET", b"/x")
        return refused

    refused = run(config([dead]), scenario)
    assert refused.status == 502 and refused.local
    assert json.loads(refused.body)["status"] == 502

    async def slow(worker):
        return await subrequest(worker, "app", b"GET", b"/hang", timeout=0.2)

    late = run(config([origin.url]), slow)
    assert late.status == 504 and late.local


def test_retries_and_the_circuit_breaker_apply():
    sick, well = Upstream(fail_with=503).start(), Upstream().start()
    try:
        extra = ("    retries: {attempts: 2, on: [503]}\n"
                 "    balancer: round_robin\n")

        async def scenario(worker):
            return [await subrequest(worker, "app", b"GET", b"/r") for _ in range(4)]

        answers = run(config([sick.url, well.url], extra), scenario)
        assert [a.status for a in answers] == [200] * 4
        assert len(sick.requests) >= 1 and len(well.requests) == 4

        breaker = "    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 30s}\n"

        async def tripped(worker):
            return [await subrequest(worker, "app", b"GET", b"/r") for _ in range(4)]

        answers = run(config([sick.url], breaker), tripped)
        assert [a.status for a in answers][:2] == [503, 503]
        assert answers[-1].status == 503 and answers[-1].local and answers[-1].header("retry-after")
    finally:
        sick.stop()
        well.stop()


def test_a_cancelled_subrequest_gives_its_connection_up(origin):
    async def scenario(worker):
        task = asyncio.ensure_future(subrequest(worker, "app", b"GET", b"/hang"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        target = worker.state.pools["app"].targets[0]
        return target.in_flight, worker.inflight

    in_flight, watched = run(config([origin.url]), scenario)
    assert in_flight == 0 and not watched
