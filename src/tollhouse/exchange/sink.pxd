# C declarations for the compiled build of sink.py (setup.py); the .py stays the source.
from tollhouse.flow cimport WorkerCore


cdef class ResponseSink:
    cdef public WorkerCore worker

    cpdef upstream_head(self, conn, int status, headers, keep_alive)
    cpdef upstream_body(self, chunk)
    cpdef upstream_trailers(self, list lines, bint relayed=*)
    cpdef upstream_done(self, conn)
    cpdef upstream_closed(self, conn, exc)
    cpdef upstream_failed(self, kind, detail)
    cpdef upstream_writable(self, bint writable)
    cpdef bint accept_connection(self, target, conn)
    cpdef bint accept_slot(self, target)
