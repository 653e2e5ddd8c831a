# C declarations for the compiled build of pipe.py (setup.py); the .py stays the source.
cimport cython


cdef class _Connection:
    cdef public object pipe, transport, reader, watchdog
    cdef public object waiting

    @cython.locals(deadline=double)
    cpdef send(self, bytes packed, callback, double timeout)
    cpdef data_received(self, data)
    cpdef _fail(self, error)
    cpdef _fail_waiting(self, error)


cpdef _call(callback, reply, error)
