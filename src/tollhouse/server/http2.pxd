# C declarations for the compiled build of http2.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.exchange.lifecycle cimport Exchange, new_exchange
from tollhouse.exchange.nghttp2 cimport Session, SessionOwner
from tollhouse.exchange.http2 cimport finalise_head
from tollhouse.flow cimport PulledOutput, WorkerCore
from tollhouse.server.protocol cimport take_header

cdef Clock CLOCK
cdef dict _GRPC_UNITS

cdef class Http2Stream
cdef class Http2Connection


cdef class Http2Stream:
    cdef public Http2Connection connection
    cdef public Session session
    cdef public object peer_ip, peer_ip_bytes, scheme, forwarded
    cdef public int stream_id
    cdef public WorkerCore worker
    cdef public Exchange exchange
    cdef public int reasons
    cdef public bint peer_trusted, source_paused, closed
    cdef public long long held

    cpdef setup(self, Http2Connection connection, int stream_id)
    cpdef pause(self, int reason)
    cpdef resume(self, int reason)
    cpdef respond(self, int status, list lines, request_id, body, bint has_body)
    cpdef interim(self, status)
    cpdef send(self, chunk)
    cpdef end(self, trailers)
    cpdef drained(self)
    cpdef abort(self)
    cpdef closing_after(self, ex)
    cpdef exchange_finished(self, Exchange ex)
    cpdef consume_held(self)


cdef class Http2Connection(SessionOwner):
    cdef public WorkerCore worker
    cdef public object scheme, peer_ip, peer_ip_bytes, forwarded, settings, transport
    cdef public Session session
    cdef public PulledOutput output
    cdef public dict streams
    cdef public bint peer_trusted, scheduled, closing, write_paused
    cdef public double last_active, stalled_since

    cpdef count_resets(self)
    cpdef schedule(self)
    cpdef send_pending(self)
    cpdef reset(self, Http2Stream stream, int code)
    cpdef end_connection(self)
    cpdef close(self)
    cpdef abort(self)
    @cython.locals(stream=Http2Stream)
    cpdef h2_headers(self, int stream_id, int category, list headers, bint end_stream, bint oversize, method, path,
                     authority)
    @cython.locals(stream=Http2Stream, ex=Exchange)
    cpdef begin_stream(self, int stream_id, list headers, bint end_stream, bint oversize, method, path, authority)
    @cython.locals(stream=Http2Stream, ex=Exchange)
    cpdef h2_data(self, int stream_id, data)
    @cython.locals(stream=Http2Stream, ex=Exchange)
    cpdef h2_end(self, int stream_id)
    @cython.locals(stream=Http2Stream, ex=Exchange)
    cpdef h2_closed(self, int stream_id, int code)
    @cython.locals(stream=Http2Stream)
    cpdef h2_drained(self, int stream_id)
    cpdef h2_goaway(self, int last_stream_id, int code)
    cpdef h2_settings(self)
    cpdef stream_finished(self, Http2Stream stream)
