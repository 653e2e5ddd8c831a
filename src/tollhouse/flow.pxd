# C declarations for the compiled build of flow.py (setup.py); the .py stays the source.

# Not `public` where only compiled code (which cimports the type) reads a field.
cdef class FlowControl:
    cdef object transport
    cdef int reasons
    cdef bint closed

    cpdef pause(self, int reason)
    cpdef resume(self, int reason)


cdef long long GATHER_LIMIT

cdef class WorkerCore


cdef class Gathered:
    cdef object transport
    cdef WorkerCore worker
    cdef list writes
    cdef long long size

    cpdef write(self, data)
    cpdef flush(self)
    cpdef drop(self)


cdef class PulledOutput(Gathered):
    cdef public object owner


cdef class WorkerCore:
    cdef public object loop, stats, state, date_line, next_request_id, tracer_factory, http2
    cdef public set connections, inflight
    cdef public list ended, outbox
    cdef public bint draining, reading, busy_polling, polling
    cdef public int active_requests
    cdef public long long trace_skip
    cdef public tuple trace_notes

    cpdef set_busy_polling(self, bint on)
    cpdef poll_again(self)
    cpdef defer(self, Gathered gathered)
    cpdef flush_if_alone(self)
    cpdef flush_outbox(self)


