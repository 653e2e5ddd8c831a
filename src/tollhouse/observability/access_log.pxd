# C declarations for the compiled build of access_log.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.exchange.lifecycle cimport Exchange

cdef dict _PROTOCOLS


@cython.locals(ex=Exchange, last=Exchange, t=cython.double, second=cython.longlong, last_second=cython.longlong)
cpdef bytes format_batch(list batch, double offset)

cpdef bytes _logged(route, slots)
