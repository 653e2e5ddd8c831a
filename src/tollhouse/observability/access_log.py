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
        dumps = orjson.dumps
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            lines = []
            for rec in batch:
                d = dict(zip(FIELDS, rec))
                d["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec[0])) + f".{int(rec[0] % 1 * 1000):03d}Z"
                for key in ("request_id", "method", "path"):
                    if isinstance(d[key], bytes):
                        d[key] = d[key].decode("latin-1")
                d["duration_ms"] = round(d["duration_ms"] * 1000, 3)
                lines.append(dumps(d))
            lines.append(b"")
            try:
                self.out.write(b"\n".join(lines))
                self.out.flush()
            except (OSError, ValueError):
                pass
            self._pending -= len(batch)


def request_id_factory():
    """Unique, sane request ids without a syscall per request: prefix + counter."""
    import itertools

    prefix = os.urandom(6).hex().encode() + b"-%x"
    counter = itertools.count(1)
    return lambda: prefix % next(counter)
