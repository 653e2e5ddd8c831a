# C declarations for the compiled build of exchange.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.pipeline cimport Reply
from tollhouse.routing cimport RouteTarget
from tollhouse.server.http1 cimport Http1Exchange   # the names of inherited methods' signatures (bound as callbacks)
from tollhouse.upstream.forward cimport Forwarding

cdef Clock CLOCK


cdef class Exchange(Forwarding):
    @cython.locals(route=RouteTarget)
    cpdef start(self)
    cpdef feed_body(self, chunk)
    cpdef body_complete(self)
    cpdef client_gone(self)
