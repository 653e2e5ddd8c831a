"""JSON access log, one line per request on stdout, written off the event loop.

The request path appends a tuple to a list (no formatting, no I/O). A timer
hands the batch to a writer thread every 100 ms, which formats and writes
it; a slow stdout reader therefore never blocks the loop. If the writer
falls more than `MAX_PENDING` lines behind, lines are dropped and counted
rather than letting memory grow.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time

import orjson

FIELDS = ("time", "request_id", "client_ip", "method", "path", "route", "status", "bytes", "duration_ms",
          "upstream", "consumer", "cache", "ratelimit")
MAX_PENDING = 100_000


class AccessLog:
    def __init__(self, loop, out=None):
        self.loop = loop
        self.out = out if out is not None else sys.stdout.buffer
        self.batch: list[tuple] = []
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._thread.start()
        self._timer = loop.call_later(0.1, self._flush)

    def write(self, record: tuple) -> None:
        """`record` follows FIELDS: `time` a Unix timestamp, `duration_ms` in
        seconds, request_id/method/path may be bytes (formatted off the loop)."""
        self.batch.append(record)

    def _flush(self) -> None:
        self._timer = self.loop.call_later(0.1, self._flush)
        self.hand_over()

    def hand_over(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        if self._pending > MAX_PENDING:
            self.dropped += len(batch)
            return
        self._pending += len(batch)
        self._queue.put(batch)

    def close(self) -> None:
        """Write what is pending and stop the writer (at shutdown)."""
        self._timer.cancel()
        self.hand_over()
        self._queue.put(None)
        self._thread.join(timeout=2)

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            data = format_batch(batch)
            try:
                self.out.write(data)
                self.out.flush()
            except (OSError, ValueError):
                pass
            self._pending -= len(batch)


_LINE = (b'{"time":"%s.%03dZ","request_id":"%s","client_ip":%s,"method":"%s","path":%s,"route":%s,"status":%d,'
         b'"bytes":%d,"duration_ms":%.3f,"upstream":%s,"consumer":%s,"cache":%s,"ratelimit":%s}')


def format_batch(batch) -> bytes:
    """JSON lines for a batch of records (FIELDS order).

    This runs on the writer thread but still on the worker's core and GIL, so
    it is lean: one bytes template per line; orjson escapes the fields a
    client can influence (path, client ip, consumer) and the repeated strings
    are encoded once per batch (memo keys are values, so bytes and str never mix up:
    a path is bytes, the other fields str). Request ids and methods are safe by
    construction (sanitised / llhttp token characters).
    """
    dumps = orjson.dumps
    memo: dict = {None: b"null"}
    last_second, stamp = None, b""
    lines = []
    for t, rid, ip, method, path, route, status, size, duration, upstream, consumer, cache, ratelimit in batch:
        second = int(t)
        if second != last_second:
            last_second = second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        get = memo.get
        lines.append(_LINE % (
            stamp, int((t - second) * 1000), rid if rid.__class__ is bytes else rid.encode(),
            get(ip) or memo.setdefault(ip, dumps(ip)),
            method if method.__class__ is bytes else method.encode(),
            get(path) or memo.setdefault(path, dumps(path.decode("latin-1") if path.__class__ is bytes else path)),
            get(route) or memo.setdefault(route, dumps(route)), status, size, duration * 1000,
            get(upstream) or memo.setdefault(upstream, dumps(upstream)),
            get(consumer) or memo.setdefault(consumer, dumps(consumer)),
            get(cache) or memo.setdefault(cache, dumps(cache)),
            get(ratelimit) or memo.setdefault(ratelimit, dumps(ratelimit))))
    lines.append(b"")
    return b"\n".join(lines)


def request_id_factory():
    """Unique, sane request ids without a syscall per request: prefix + counter."""
    import itertools

    prefix = os.urandom(6).hex().encode() + b"-%x"
    counter = itertools.count(1)
    return lambda: prefix % next(counter)
