# C declarations for the compiled build of protocol.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.exchange.http1 cimport Http1Codec
from tollhouse.exchange.lifecycle cimport Exchange, new_exchange
from tollhouse.flow cimport FlowControl, Gathered, WorkerCore

cdef Clock CLOCK
cdef dict _SPECIAL, _NOTED_HEADERS
cdef frozenset _SPECIAL_LENGTHS
cdef Py_ssize_t _NOTED_COUNT
cdef object _COMPILED_FOR
cdef bytes PREFACE

cpdef take_header(Exchange ex, name, value)
cpdef bint take_special(Exchange ex, int kind, name, lower, value)

cdef class ClientConnection:
    cdef public WorkerCore worker
    cdef public object transport, parser, peer_ip, peer_ip_bytes, scheme, pending, fatal, limits
    cdef public Gathered outgoing
    cdef public object forwarded, successor, early
    cdef public Exchange active, incoming
    cdef public bint peer_trusted, closing, in_head, write_paused, fresh
    cdef public FlowControl flow
    cdef public double head_started, last_active
    cdef public long long head_bytes, read_size

    cpdef write(self, data)
    cpdef received(self, data)
    @cython.locals(codec=Http1Codec)
    cpdef on_headers_complete(self)
    cpdef closing_after(self, Exchange ex)
    cpdef exchange_finished(self, Exchange ex)
    cpdef close(self)
    cpdef abort(self)
