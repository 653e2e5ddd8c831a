"""JSON access log, one line per request on stdout, written off the event loop.

The request path formats nothing: every 20 ms the worker formats the batch
of exchanges ended meanwhile (the same batch its metrics are counted from)
on the loop, in one call, and hands the bytes to a writer thread, which
only writes them; a slow stdout reader therefore never blocks the loop. If
the writer falls more than `MAX_PENDING` lines behind, lines are dropped
and counted rather than letting memory grow.

Why the thread only writes: formatting there too (as this module once did)
cost the full chain 5 % of its throughput on one core, against formatting
the same lines on the loop. The thread then held the GIL for every batch's
600-odd lines and freed the batch's exchanges, and the loop's callbacks
waited on the GIL meanwhile (docs/benchmarks.md, "Eleventh session").
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from time import perf_counter

import orjson

FIELDS = ("time", "request_id", "client_ip", "method", "path", "protocol", "route", "status", "grpc_status", "bytes",
          "duration_ms",
          "upstream", "consumer", "cache", "ratelimit")
MAX_PENDING = 100_000


class AccessLog:
    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout.buffer
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._thread.start()

    def write_batch(self, exchanges: list) -> None:
        """Format a batch of ended exchanges and hand the lines to the writer thread
        (the worker does, every 20 ms). Their `ended` perf_counter stamps become
        wall time with one offset per batch."""
        if self._pending > MAX_PENDING:
            self.dropped += len(exchanges)
            return
        self._pending += len(exchanges)
        self._queue.put((len(exchanges), format_batch(exchanges, time.time() - perf_counter())))

    def close(self) -> None:
        """Write what is pending and stop the writer (at shutdown)."""
        self._queue.put(None)
        self._thread.join(timeout=2)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            count, data = item
            try:
                self.out.write(data)
                self.out.flush()
            except (OSError, ValueError):
                pass
            self._pending -= count


_LINE = (b'{"time":"%s.%03dZ","request_id":"%s","client_ip":%s,"method":"%s","path":%s,"protocol":"%s","status":%d,'
         b'"grpc_status":%s,"bytes":%d,"duration_ms":%.3f,%s%s}')
_PROTOCOLS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0", "2": b"HTTP/2"}


def _context(route, target, consumer, labels) -> bytes:
    """The fields that repeat across a batch's lines, rendered once per combination:
    the route, the target, the consumer and each policy outcome (null where none)."""
    found = dict(zip(route.chain.outcome_names, labels)) if labels else {}
    return b'"route":%s,"upstream":%s,"region":%s,"consumer":%s%s' % (
        orjson.dumps(route.name if route is not None else ""), orjson.dumps(target.url if target is not None else None),
        orjson.dumps(target.region if target is not None else None), orjson.dumps(consumer),
        b"".join(b',"%s":%s' % (name.encode(), orjson.dumps(found.get(name))) for name in _outcome_names()))


_NAMES: list = []


def _outcome_names() -> tuple:
    if not _NAMES:
        from ..registry import log_field_names, outcome_names

        _NAMES.append(outcome_names())
        fields = log_field_names()
        _NAMES.append(fields)
        _NAMES.append(b"".join(b',"%s":null' % name.encode() for name in fields))
    return _NAMES[0]


def _logged(route, slots) -> bytes:
    """The fields policies fill per request (registry.PolicyKind.log_fields), null where none."""
    if not _NAMES:
        _outcome_names()
    if route is None or not route.chain.logged or slots is None:
        return _NAMES[2]
    values = route.chain.logged_values(slots)
    parts = []
    for name in _NAMES[1]:
        parts.append(b',"%s":%s' % (name.encode(), orjson.dumps(values.get(name))))
    return b"".join(parts)


def format_batch(batch: list, offset: float) -> bytes:
    """JSON lines (FIELDS) for a batch of ended exchanges; `offset` turns their
    perf_counter stamps into Unix time.

    This runs on the event loop, once per batch, so it is lean: one bytes
    template per line; orjson escapes the fields a client can influence
    (path, client ip, consumer); what repeats (client ips, paths, and the
    route/upstream/consumer/outcomes combination) is rendered once per batch.
    Request ids and methods are safe by construction (sanitised / llhttp
    token characters).
    """
    dumps = orjson.dumps
    memo: dict = {}
    get = memo.get
    last_second, stamp = -1, b""
    lines = []
    last = context = last_consumer = None
    for ex in batch:
        t = ex.ended + offset
        second = int(t)
        if second != last_second:
            last_second = second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        # Consecutive lines mostly share their context: compared with the last line's
        # before a key is built and looked up.
        identity = ex.identity
        consumer = identity.consumer if identity is not None else None
        if last is None or not (ex.route is last.route and ex.target is last.target and consumer == last_consumer
                                and ex.outcomes == last.outcomes):
            key = (ex.route, ex.target, consumer, ex.outcomes)   # outcome labels, as Stats.fold read them
            context = get(key)
            if context is None:
                context = memo[key] = _context(*key)
            last = ex
            last_consumer = consumer
        # Without X-Forwarded-For the client is the socket peer (no property call).
        ip = ex.conn.peer_ip if ex.xff is None else ex.client_ip
        path = ex.path
        lines.append(_LINE % (
            stamp, int((t - second) * 1000), ex.request_id, get(ip) or memo.setdefault(ip, dumps(ip)), ex.method,
            get(path) or memo.setdefault(path, dumps(path.decode("latin-1"))), _PROTOCOLS.get(ex.version, b"HTTP/1.1"),
            ex.status, b"null" if ex.grpc_status < 0 else b"%d" % ex.grpc_status, ex.bytes_sent,
            (ex.ended - ex.started) * 1000, context, _logged(ex.route, ex.slots)))
    lines.append(b"")
    return b"\n".join(lines)


def request_id_factory():
    """Unique, sane request ids without a syscall per request: prefix + counter."""
    import itertools

    prefix = os.urandom(6).hex().encode() + b"-%x"
    counter = itertools.count(1)
    return lambda: prefix % next(counter)
