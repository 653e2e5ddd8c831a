import asyncio

from tollhouse.store import MemoryStore, Script


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def incr(store, keys, args, now):
    value = (store.read(keys[0]) or 0) + int(args[0])
    store.write(keys[0], value, ttl=float(args[1]))
    return value


INCR = Script("incr", "return redis.call('INCRBY', KEYS[1], ARGV[1])", incr)


def test_scripts_values_ttls_and_locks():
    clock = Clock()
    s = MemoryStore(clock)

    async def go():
        assert await s.run(INCR, ["k"], [2, 10]) == 2
        assert await s.run(INCR, ["k"], [3, 10]) == 5
        await s.set("v", b"x", ttl=5)
        assert await s.get("v") == b"x"
        clock.now += 6
        assert await s.get("v") is None
        token = await s.lock("l", 1)
        assert token and await s.lock("l", 1) is None
        assert not await s.unlock("l", "wrong") and await s.unlock("l", token)
        assert await s.ping()

    asyncio.run(go())
