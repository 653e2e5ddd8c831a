# C declarations for the compiled build of request.py (setup.py); the .py stays the source.
from tollhouse.exchange.sink cimport ResponseSink
from tollhouse.routing cimport RouteTarget
from tollhouse.upstream.pool cimport TargetPool, UpstreamConnection, UpstreamPool

cdef dict _SPECIAL_ATTR


cdef class Request(ResponseSink):
    cdef public list headers, response_headers, slots
    cdef public RouteTarget route
    cdef public UpstreamConnection upstream
    cdef public TargetPool target
    cdef public UpstreamPool pool
    cdef public object conn, codec, body_chunks, state, params, method, raw_target, path, query
    cdef public object version, host, request_id, content_length, te, connection_tokens, expect, xff, xfp, xfh
    cdef public object error, task, timer, vars, _client_ip, identity, trailers, request_trailers
    cdef public object local, tried, body_waiter
    cdef public list observers, body_filters, body_readers, noted
    cdef public object duplicate, tracer
    cdef public tuple outcomes
    cdef public bint keep_alive, chunked, upgrade, body_done, continue_sent, head_received, finished
    cdef public bint replayed, sent_body, upstream_keepalive, upstream_delimited
    cdef public int host_count, mode, attempt, status, response, grpc_status
    cdef public long long body_buffered, body_received, bytes_sent, body_limit
    cdef public double started, upstream_started, upstream_clock, deadline, first_started, body_progress, ended
    cdef public double upstream_time, time_limit, admitted

    cpdef setup(self, conn, state)
    cpdef noted_value(self, int index)
    cpdef bint noted_any(self, tuple indexes)
    cpdef remember(self, int slot, value)
    cpdef recall(self, int slot)
    cpdef finish(self)
