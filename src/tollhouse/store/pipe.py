"""One pipelined Redis connection for the request path: an asyncio Protocol on hiredis's Reader.

The batchers (rate-limit scripts, cache lookups) make one call per loop
tick, and each call's cost is divided only by its batch. Through redis-py's
asyncio connection a call took ~95 µs of CPU in user space (a task per
batch, an `asyncio.timeout` with its timer, the stream writer's `drain`,
the stream reader and redis-py's response machinery); here it takes ~25 µs:
one `transport.write` and, later, one `data_received` that hands the reply
to a callback, with no task and no future. hiredis (the C parser redis-py
itself uses) parses the replies; Redis answers pipelined commands in order,
so the callbacks wait in a FIFO.

The connection's settings (host or unix socket, TLS context, AUTH, SELECT,
client name) come from the redis-py client built from the same URL, so both
reach the same server the same way. A call not answered within `timeout`
fails with TimeoutError and closes the connection (a late reply would put
every later call out of step); a lost connection fails what it had in
flight; the next call opens a new one.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

import hiredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

log = logging.getLogger("tollhouse.store")

#: reply callback: (reply, None) or (None, error)
Callback = Callable[[object, BaseException | None], None]


def reply_error(error: hiredis.ReplyError) -> ResponseError:
    """A Redis error reply as redis-py's exception (NOSCRIPT as NoScriptError, as redis-py raises it)."""
    message = str(error)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Connection:   # an asyncio protocol by its methods (a compiled class cannot subclass asyncio.Protocol)
    __slots__ = ("pipe", "transport", "reader", "waiting", "watchdog")

    def __init__(self, pipe: "RedisPipe"):
        self.pipe = pipe
        self.transport = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque = collections.deque()   # (callback, deadline) per call, in order
        # One timer for the oldest call, not one per call (a timer costs more than the call's own Python).
        self.watchdog = None

    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        return False   # close the transport; connection_lost fails what was in flight

    def pause_writing(self):
        pass   # a command per tick: nothing piles up worth holding back

    def resume_writing(self):
        pass

    def send(self, packed: bytes, callback: Callback, timeout: float) -> None:
        self.transport.write(packed)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting.append((callback, deadline))
        watchdog = self.watchdog
        if watchdog is None or deadline < watchdog.when():   # a shorter timeout than the one watched
            if watchdog is not None:
                watchdog.cancel()
            self.watchdog = loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        """The earliest deadline came: fail if its call is still unanswered, else watch the next one."""
        self.watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        earliest = min(deadline for _, deadline in self.waiting)
        if earliest <= loop.time():
            self._fail(TimeoutError("Redis did not answer in time"))
        else:
            self.watchdog = loop.call_at(earliest, self._watch)

    def data_received(self, data):
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self._fail(RedisConnectionError(f"Redis protocol error: {e}"))
                return
            if reply is False:
                return
            if not waiting:
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            callback = waiting.popleft()[0]
            if reply.__class__ is hiredis.ReplyError:
                _call(callback, None, reply_error(reply))
            else:
                _call(callback, reply, None)

    def connection_lost(self, exc):
        self.transport = None
        if self.pipe.connection is self:
            self.pipe.connection = None
        self._fail_waiting(RedisConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, error: BaseException) -> None:
        """Out of step with the server: close, and fail every call in flight."""
        if self.pipe.connection is self:
            self.pipe.connection = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._fail_waiting(error)

    def _fail_waiting(self, error: BaseException) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        waiting, self.waiting = self.waiting, collections.deque()
        for callback, _ in waiting:
            _call(callback, None, error)


def _call(callback: Callback, reply, error) -> None:
    try:
        callback(reply, error)
    except Exception:  # noqa: BLE001 - one caller's bug must not stop the others' replies
        log.exception("a Redis reply callback failed")


def _settle(future: asyncio.Future) -> Callback:
    """A callback that settles `future` (unless it was cancelled meanwhile)."""
    def settle(reply, error):
        if not future.done():
            if error is None:
                future.set_result(reply)
            else:
                future.set_exception(error)
    return settle


class RedisPipe:
    """Calls to one Redis node over one pipelined connection, opened on first use."""

    def __init__(self, client, timeout: float):
        self.timeout = timeout
        pool = client.connection_pool
        settings = dict(pool.connection_kwargs)
        self.path = settings.get("path")              # unix:// URLs
        self.host = settings.get("host", "127.0.0.1")
        self.port = settings.get("port", 6379)
        self.ssl = None
        if issubclass(pool.connection_class, SSLConnection):
            # rediss://: the TLS context redis-py would use, from the same URL options.
            self.ssl = pool.connection_class(**settings).ssl_context.get()
        self.handshake = []
        if settings.get("password") is not None:
            user = settings.get("username")
            self.handshake.append(("AUTH", user, settings["password"]) if user else ("AUTH", settings["password"]))
        if settings.get("db"):
            self.handshake.append(("SELECT", settings["db"]))
        if settings.get("client_name"):
            self.handshake.append(("CLIENT", "SETNAME", settings["client_name"]))
        self.connection: _Connection | None = None
        self.connecting: asyncio.Task | None = None
        self.backlog: list = []   # calls made while connecting

    def call(self, packed: bytes, callback: Callback, timeout: float | None = None) -> None:
        """Send one packed command (hiredis.pack_command); `callback(reply, error)` gets its
        answer, or a TimeoutError after `timeout` (the pipe's own by default)."""
        timeout = timeout or self.timeout
        connection = self.connection
        if connection is not None:
            connection.send(packed, callback, timeout)
            return
        self.backlog.append((packed, callback, timeout))
        if self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def command(self, *args):
        """One command, awaited (for callers that are coroutines anyway)."""
        future = asyncio.get_running_loop().create_future()

        self.call(hiredis.pack_command(args), _settle(future))
        return await future

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection = _Connection(self)
        try:
            async with asyncio.timeout(self.timeout):
                if self.path:
                    await loop.create_unix_connection(lambda: connection, self.path)
                else:
                    await loop.create_connection(lambda: connection, self.host, self.port, ssl=self.ssl,
                                                 server_hostname=self.host if self.ssl else None)
                answers = []
                for args in self.handshake:
                    answers.append(loop.create_future())
                    connection.send(hiredis.pack_command(args), _settle(answers[-1]), self.timeout)
                for answer in answers:
                    await answer   # AUTH refused, a database that does not exist: raises
        except BaseException as e:
            if connection.transport is not None:
                connection.transport.abort()
            backlog, self.backlog = self.backlog, []
            self.connecting = None
            error = e if isinstance(e, Exception) else RedisConnectionError("Redis connection cancelled")
            if isinstance(e, OSError):
                error = RedisConnectionError(f"cannot reach Redis: {e}")
            for _, callback, _ in backlog:
                _call(callback, None, error)
            if not isinstance(e, Exception):
                raise
            return
        self.connecting = None
        self.connection = connection
        backlog, self.backlog = self.backlog, []
        for packed, callback, timeout in backlog:
            connection.send(packed, callback, timeout)

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        connection, self.connection = self.connection, None
        if connection is not None:
            connection._fail(RedisConnectionError("the store was closed"))
