"""Redis's own time for the rate-limit script (`INFO commandstats`), per call of 50 requests.

    .venv/bin/python bench/ratelimit_script.py

Starts a redis-server on a free port (the load cores, CPU 1), sends 300 script calls of 50
one-limit requests for each algorithm, once with every request on one key
(one hot client) and once with 50 distinct keys, and prints Redis's
microseconds per call: the Redis CPU a limited request costs, which the
gateway's own benchmarks do not show.
"""
from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tollhouse.policies.ratelimit.limiter import LUA  # noqa: E402
from tollhouse.store.redis import RedisStore  # noqa: E402
from run import start_redis  # noqa: E402

BATCH = 50
CALLS = 300


async def measure(url: str, distinct_keys: int) -> float:
    store = RedisStore(url)
    try:
        await store.client.flushall()
        await store.client.config_resetstat()
        sha = await store.client.script_load(LUA)
        for algo in (b"0", b"1", b"2"):   # fixed, sliding, bucket: keys apart (their state types differ)
            keys = [b"th:rl:v1:{bench}:bench:%s:ip:10.0.%d.%d" % (algo, i // 250, i % 250)
                    for i in range(distinct_keys)]
            # As the limiter sends them: one profile, then runs of requests sharing keys
            # (profile index, count): one run of 50, or 50 runs of one.
            runs = [b"1", b"%d" % (BATCH // distinct_keys)] * distinct_keys
            args = [b"1", b"1", algo, b"100000000", b"60000", b"100000000", b"%d" % distinct_keys] + runs
            for _ in range(CALLS):
                await store.command("EVALSHA", sha, len(keys), *keys, *args)
        stats = await store.client.info("commandstats")
        return float(stats["cmdstat_evalsha"]["usec_per_call"])
    finally:
        await store.close()


def main() -> None:
    redis, port = start_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for distinct in (1, BATCH):
            usec = asyncio.run(measure(url, distinct))
            print(f"{distinct:>2} distinct key(s): {usec:.0f} us of Redis per call of {BATCH} requests "
                  f"({usec / BATCH:.1f} us a request)")
    finally:
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
