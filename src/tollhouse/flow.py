"""How bytes flow through a worker: reading paused for named reasons, writes
gathered until the event loop's batch of callbacks is done.

`FlowControl` (after uvicorn's) owns why one transport's reading is paused:
each reason is a named bit, and reading resumes when no reason is left.
`Gathered` holds one connection's writes and `WorkerCore` the worker's
outbox of them (docs/architecture.md, "Writes leave once per loop
iteration"). The client side (server/), the upstream side (upstream/) and
the exchange all import this module; it imports none of them.
"""
from __future__ import annotations

import logging

log = logging.getLogger("tollhouse.flow")

# Why a transport's reading is paused (a bit each). On a client connection:
UPSTREAM_FULL = 1   # the upstream's write buffer is full: no more request body for now
BODY_WAITING = 2    # a request body waits for an upstream connection (buffered past 64 KiB)
PIPELINE = 4        # a pipelined request waits its turn, or nothing more is read (closing)
# On an upstream connection:
CLIENT_FULL = 8     # the client's write buffer is full: no more response body for now


class FlowControl:
    """Pauses and resumes one transport's reading for named reasons (a bit each):
    reading stops at the first reason and resumes when the last one is gone."""

    __slots__ = ("transport", "reasons", "closed")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = 0
        self.closed = transport is None   # a stand-in connection (a subrequest's) has nothing to pause

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.closed:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.closed:
                self.transport.resume_reading()


# A connection writes at once when it has gathered this much (a streamed
# body): the transport's backpressure (pause_writing) must see a big stream
# as it comes, and libuv reads a busy socket up to 32 times per callback.
GATHER_LIMIT = 64 * 1024


class Gathered:
    """Writes to one transport, gathered until the worker flushes its outbox
    (`WorkerCore.defer`), then sent in one write. The client connection and
    the upstream connection each own one (`outgoing`)."""

    __slots__ = ("transport", "worker", "writes", "size")

    def __init__(self, transport, worker):
        self.transport = transport
        self.worker = worker
        self.writes = None
        self.size = 0

    def write(self, data: bytes) -> None:
        writes = self.writes
        if writes is None:
            self.writes = [data]
            self.size = len(data)
            self.worker.defer(self)
        else:
            writes.append(data)
            self.size += len(data)
        if self.size > GATHER_LIMIT:
            self.flush()

    def flush(self) -> None:
        writes = self.writes
        if writes is not None:
            self.writes = None
            if not self.transport.is_closing():
                self.transport.write(writes[0] if len(writes) == 1 else b"".join(writes))

    def drop(self) -> None:
        """The connection is aborted: what was gathered is never sent."""
        self.writes = None


class PulledOutput(Gathered):
    """The outbox entry of a connection whose bytes are made when they leave (an HTTP/2
    session's frames, which nghttp2 writes as windows allow): `flush()` asks its owner to
    send what it has pending (`owner.send_pending()`), once per loop iteration."""

    __slots__ = ("owner",)

    def __init__(self, owner, transport, worker):
        Gathered.__init__(self, transport, worker)
        self.owner = owner

    def write(self, data: bytes) -> None:
        raise RuntimeError("this connection's bytes come from its owner")

    def flush(self) -> None:
        self.owner.send_pending()

    def drop(self) -> None:
        pass


class WorkerCore:
    """What the request path reads of its worker on every request; `server.worker.Worker`
    (and any stand-in for it) extends this. Compiled, these are C fields and typed
    containers instead of instance-dict lookups (see exchange.pxd).

    It also owns the outbox: connections write nothing while the event loop
    works through a batch of reads; what each gathered leaves in one write
    when the batch is done (`flush_outbox`, via call_soon). Writing at once
    wakes the peer (an upstream, a client) on its own core for every
    message; gathered, one wake-up serves the batch. On the 2-core bench
    this cut the kernel's time per request from 22 to 12 µs
    (docs/architecture.md, "Writes leave once per loop iteration"). With
    one client connection open there is nothing to batch with, and the read
    callbacks flush at their end (`flush_if_alone`): a lone client waits for
    no loop iteration, and inside such a callback (`reading`) no flush is
    scheduled at all. (Requests under way would be the wrong test: a cache
    hit starts and ends inside its read callback.)
    """

    __slots__ = ("loop", "stats", "state", "connections", "inflight", "ended", "draining", "date_line", "next_request_id",
                 "outbox", "active_requests", "reading", "tracer_factory", "trace_skip", "trace_notes", "busy_polling",
                 "polling", "http2")

    def __init__(self, loop):
        self.loop = loop
        self.connections = set()
        self.inflight = set()   # exchanges waiting on an upstream, watched for timeouts
        self.ended = []         # finished exchanges not yet counted in the metrics and logged
        self.outbox = []        # Gathered writes waiting for the end of the loop's batch
        self.active_requests = 0
        self.reading = False    # inside a read callback, which ends with flush_if_alone
        self.draining = False
        self.tracer_factory = None   # exchange -> a Tracer or None, asked as each request starts
        # Requests the ratio sampler has already decided to pass over (tracing.TracingFactory):
        # counted down as they start, without calling the factory.
        self.trace_skip = 0
        # Noted headers (exchange.noted) that make a request ask the factory whatever the skip
        # says: a client's traceparent, a debug token.
        self.trace_notes = ()
        self.busy_polling = False   # busy_polling: the loop always has a callback ready (poll_again)
        self.polling = False        # poll_again is scheduled
        self.http2 = None           # makes the protocol of a connection that speaks HTTP/2 (server/http2.py), or None

    def set_busy_polling(self, on: bool) -> None:
        """`busy_polling`: keep one callback always ready, so the event loop polls for
        I/O with a zero timeout instead of sleeping in epoll_wait. A sleeping worker
        is woken by the kernel for each message, which on a VM costs tens of µs a
        hop (an IPI, the vCPU halting); HAProxy's `busy-polling` trades the same way."""
        self.busy_polling = on
        if on and not self.polling:
            self.polling = True
            self.loop.call_soon(self.poll_again)

    def poll_again(self) -> None:
        if self.busy_polling:
            self.loop.call_soon(self.poll_again)
        else:
            self.polling = False

    def defer(self, gathered) -> None:
        """`gathered` holds writes; its `flush()` is called once this loop iteration's callbacks are done."""
        if not self.outbox and not (self.reading and len(self.connections) <= 1):
            self.loop.call_soon(self.flush_outbox)
        self.outbox.append(gathered)

    def flush_if_alone(self) -> None:
        """At the end of a read callback: write now when no other client could share the batch."""
        if self.outbox and len(self.connections) <= 1:
            self.flush_outbox()

    def flush_outbox(self) -> None:
        outbox = self.outbox
        self.outbox = []
        for gathered in outbox:
            try:
                gathered.flush()
            except Exception:  # noqa: BLE001 - one connection's failure must not strand the others' bytes
                log.exception("writing to a connection failed")
