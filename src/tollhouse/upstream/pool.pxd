# C declarations for the compiled build of pool.py (setup.py); the .py stays the source.
from tollhouse.clock cimport Clock

from tollhouse.exchange.sink cimport ResponseSink
from tollhouse.flow cimport FlowControl, Gathered

cdef Clock CLOCK
cdef dict _RESPONSE_SPECIAL
cdef int DROPPED, CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, DATE
cdef frozenset _SPECIAL_LENGTHS

cdef class TargetPool

cdef class UpstreamConnection:
    cdef public list headers
    cdef public Gathered outgoing
    cdef public FlowControl flow
    cdef public object transport, parser, loop, content_length, connection_tokens
    cdef public TargetPool target
    cdef public ResponseSink exchange
    cdef public object codec   # an exchange.codec.UpstreamCodec (not cimported: codec.pxd cimports the request, which cimports this)
    cdef public bint closed, reused, got_bytes, head_only, chunked, bad_coding, dated
    cdef public double idle_since, last_read

    cpdef finish_message(self)
    cpdef send(self, ResponseSink exchange, list parts, bint head_only)
    cpdef unbind(self)
    cpdef abort(self)


cdef class TargetPool:
    cdef public object url, name, host, host_header, ssl, settings, loop, idle, waiters
    cdef public int weight, port, open, in_flight, max_connections, consecutive_failures, ejections
    cdef public double ejected_until
    cdef public bint healthy
    cdef public object codec   # an exchange.codec.UpstreamCodec (not cimported: codec.pxd cimports the request, which cimports this)
    cdef public object region, zone

    cpdef bint can_open(self)
    cpdef UpstreamConnection checkout(self)
    cpdef bint reserve(self)
    cpdef wait(self, waiter)
    cpdef leave(self, waiter)
    cpdef release(self, UpstreamConnection conn)
    cpdef lost(self, UpstreamConnection conn)
    cpdef wake_waiter(self)


cdef class UpstreamPool:
    cdef public object name, settings, targets, balancer, single, breaker, outlier, retries, signature, localities, dns, concurrency
    cdef public int active_requests, retries_in_flight, ejection_count, retry_count, _next

    cpdef request_started(self)
    cpdef request_ended(self, bint retried)
    cpdef retry_started(self, bint first)
    cpdef bint retry_allowed(self)
    cpdef TargetPool choose(self, exchange=*, tried=*)
    cpdef bint usable(self, TargetPool target, tried)
    cpdef attempt_ended(self, TargetPool target, bint ok)
