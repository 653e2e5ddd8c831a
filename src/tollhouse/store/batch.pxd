# C declarations for the compiled build of batch.py (setup.py); the .py stays the source.

cdef class TickBatcher:
    cdef public object send
    cdef public list pending
    cdef public Py_ssize_t max_in_flight, max_batch, in_flight
    cdef public bint scheduled

    cpdef add(self, item)
    cpdef _start(self)
    cpdef _done(self)
