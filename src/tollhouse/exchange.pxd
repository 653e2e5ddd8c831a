# C declarations for the compiled build of exchange.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.flow cimport WorkerCore
from tollhouse.pipeline cimport Reply
from tollhouse.routing cimport RouteTarget
from tollhouse.upstream.pool cimport TargetPool, UpstreamConnection, UpstreamPool

cdef Clock CLOCK
cdef dict _NORMAL_PATHS, _SPECIAL_ATTR, _SANE_HOSTS
cdef frozenset _NO_BODY_STATUS, _IDEMPOTENT

cpdef bint _sane_host(host)
cdef class Exchange:
    cdef public list headers, response_headers, slots
    cdef public RouteTarget route
    cdef public WorkerCore worker
    cdef public object conn, body_chunks, state, params, method, raw_target, path, query
    cdef public object version, host, request_id, content_length, te, connection_tokens, expect, xff, xfp, xfh
    cdef public UpstreamConnection upstream
    cdef public TargetPool target
    cdef public object error, task, timer, vars, consumer, _client_ip, tier
    cdef public object local, authorization, tried, observer, body_waiter, body_filter
    cdef public object duplicate
    cdef public bint keep_alive, chunked, upgrade, body_done, continue_sent, head_sent, head_received, finished
    cdef public bint response_done, replayed, sent_body, upstream_keepalive, upstream_delimited, conditional, cookie
    cdef public int host_count, mode, attempt, status
    cdef public long long body_buffered, body_received, bytes_sent, body_limit
    cdef public double started, upstream_started, upstream_clock, deadline, first_started, body_progress, ended
    cdef public double upstream_time

    cpdef remember(self, int slot, value)
    cpdef recall(self, int slot)
    cpdef finalise_head(self, limits)
    @cython.locals(route=RouteTarget)
    cpdef start(self)
    @cython.locals(pool=UpstreamPool, target=TargetPool)
    cpdef proxy(self)
    cpdef use_target(self, TargetPool target)
    @cython.locals(target=TargetPool, route=RouteTarget)
    cpdef send_upstream(self, UpstreamConnection conn)
    cpdef feed_body(self, chunk)
    cpdef body_complete(self)
    @cython.locals(route=RouteTarget)
    cpdef upstream_head(self, conn, int status, headers, keep_alive)
    cpdef write_head(self, body=*)
    cpdef upstream_body(self, chunk)
    cpdef end_body(self)
    cpdef upstream_done(self, UpstreamConnection conn)
    cpdef abort_upstream(self)
    cpdef answer(self, Reply reply)
    @cython.locals(pool=UpstreamPool)
    cpdef finish(self)
    cpdef client_gone(self)
