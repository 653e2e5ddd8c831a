"""The request path's Redis connection (tollhouse.store.pipe) against a real redis-server."""
import asyncio

import pytest
import redis as redis_py
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.support.processes import RedisServer, free_port
from tollhouse.store.redis import RedisStore


@pytest.fixture
def protected():
    r = RedisServer("--requirepass", "s3cret").start()
    yield r
    r.cleanup()


def with_store(url: str, body, **settings):
    """Run `await body(store)` with a RedisStore on `url`, closed afterwards."""
    async def go():
        store = RedisStore(url, **settings)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(go())


def test_commands_are_pipelined_and_answered_in_order(redis):
    async def body(store):
        return await asyncio.gather(*(store.command("INCR", "n") for _ in range(300)))
    assert with_store(redis.url, body) == list(range(1, 301))


def test_auth_database_and_client_name_come_from_the_url(protected):
    async def body(store):
        assert await store.command("SET", "where", "db3") == b"OK"
        return await store.command("CLIENT", "LIST")
    url = f"redis://:s3cret@127.0.0.1:{protected.port}/3?client_name=tollhouse-test"
    assert b"name=tollhouse-test" in with_store(url, body)
    assert redis_py.Redis(port=protected.port, password="s3cret").get("where") is None   # not in database 0
    assert redis_py.Redis(port=protected.port, password="s3cret", db=3).get("where") == b"db3"


def ping_fails(url: str, error: type, match: str) -> None:
    """A PING through a store on `url` raises `error` with a message matching `match`."""
    async def body(store):
        with pytest.raises(error, match=match):
            await store.command("PING")
    with_store(url, body)


def test_a_refused_password_fails_the_call_naming_the_reason(protected):
    ping_fails(f"redis://:wrong@127.0.0.1:{protected.port}/0", ResponseError, "WRONGPASS|invalid password")


def test_an_error_reply_fails_that_call_only(redis):
    async def body(store):
        await store.command("SET", "text", "abc")
        with pytest.raises(ResponseError, match="not an integer"):
            await store.command("INCR", "text")
        assert await store.command("INCR", "n") == 1   # the connection stays in step
    with_store(redis.url, body)


def test_a_server_that_stops_answering_times_out_and_the_next_call_reconnects(redis):
    async def body(store):
        assert await store.command("PING") == b"PONG"
        first = store.pipe.connection
        redis.pause()
        try:
            with pytest.raises(TimeoutError):
                await store.command("PING")
            assert store.pipe.connection is None   # closed: a late reply would be out of step
        finally:
            redis.resume()
        assert await store.command("PING") == b"PONG"
        assert store.pipe.connection is not first
    with_store(redis.url, body, timeout=0.3)


def test_calls_in_flight_fail_at_once_when_the_connection_is_lost(redis):
    async def body(store):
        assert await store.command("PING") == b"PONG"
        redis.pause()
        pending = [asyncio.ensure_future(store.command("PING")) for _ in range(3)]
        await asyncio.sleep(0.1)
        redis.kill()   # the socket is reset: no waiting out the 5 s timeout
        started = asyncio.get_running_loop().time()
        for call in pending:
            with pytest.raises(RedisConnectionError):
                await call
        assert asyncio.get_running_loop().time() - started < 2
        redis.start()
        assert await store.command("PING") == b"PONG"   # on a new connection
    with_store(redis.url, body, timeout=5)


def test_connections_closed_by_the_server_while_idle_are_replaced(redis):
    async def body(store):
        assert await store.command("PING") == b"PONG"
        redis_py.Redis(port=redis.port).client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.1)
        assert await store.command("PING") == b"PONG"
    with_store(redis.url, body)


def test_an_unreachable_server_fails_the_call_with_a_connection_error():
    ping_fails(f"redis://127.0.0.1:{free_port()}/0", RedisConnectionError, "cannot reach Redis")


def test_a_shorter_timeout_after_a_longer_one_is_kept(redis):
    async def body(store):
        assert await store.command("PING") == b"PONG"
        await asyncio.sleep(0.7)   # that call's watch has run out: nothing watched
        loop = asyncio.get_running_loop()
        answers = {"slow": loop.create_future(), "quick": loop.create_future()}

        def answered(name):
            return lambda reply, error: answers[name].set_result(error)

        redis.pause()
        try:
            started = loop.time()
            store.call(("PING",), answered("slow"), 5.0)
            store.call(("PING",), answered("quick"), 0.3)
            assert isinstance(await answers["quick"], TimeoutError)
            assert loop.time() - started < 2   # not at the 5 s deadline watched first
        finally:
            redis.resume()
    with_store(redis.url, body)
