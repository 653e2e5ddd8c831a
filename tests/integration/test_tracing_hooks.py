"""The core's hooks around each policy and upstream attempt (pipeline.Tracer), in a real worker."""
import asyncio

from tests.support.policies import RecordingTracer
from tests.support.processes import free_port, refused_port
from tests.support.upstream import Upstream
from tollhouse.config import load_text
from tollhouse.server.worker import Worker


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    await reader.read()
    writer.close()
    return status


def test_a_tracer_sees_each_policy_and_each_upstream_attempt():
    live = Upstream().start()
    dead = f"http://127.0.0.1:{refused_port()}"
    port = free_port()
    cfg, errors = load_text(f"""
listen: 127.0.0.1:{port}
access_log: false
ip: {{allow: [127.0.0.0/8]}}
upstreams:
  live: {{targets: ["{live.url}"]}}
  dead:
    targets: ["{dead}"]
    connect_timeout: 200ms
    retries: {{attempts: 2, on: [connect_error]}}
routes:
  - {{name: limited, match: {{prefix: /limited}}, upstream: live, rate_limits: [{{limit: 1, window: 1m}}]}}
  - {{name: gone, match: {{prefix: /gone}}, upstream: dead}}
""")
    assert not errors, errors
    tracers = []

    async def main():
        worker = Worker(cfg, None, asyncio.get_running_loop())
        worker.tracer_factory = lambda exchange: tracers.append(RecordingTracer()) or tracers[-1]
        await worker.start(reuse_port=False)
        try:
            return [await _get(port, path) for path in ("/limited", "/limited", "/gone")]
        finally:
            await worker.drain(grace=0.5)

    try:
        statuses = asyncio.run(main())
    finally:
        live.stop()
    assert statuses == [200, 429, 502]
    allowed, refused, failed = (t.events for t in tracers)
    assert allowed == [("policy_started", "IpPolicy"), ("policy_ended", "IpPolicy", None),
                       ("policy_started", "RateLimitPolicy"), ("policy_ended", "RateLimitPolicy", None),
                       ("attempt_started", live.url, 1), ("attempt_ended", live.url, 200, None), ("finished", 200)]
    assert refused[-2:] == [("policy_ended", "RateLimitPolicy", 429), ("finished", 429)]
    assert not [e for e in refused if e[0].startswith("attempt")]
    assert failed[2:] == [("attempt_started", dead, 1), ("attempt_ended", dead, 502, "connect_error"),
                          ("attempt_started", dead, 2), ("attempt_ended", dead, 502, "connect_error"),
                          ("finished", 502)]
