# C declarations for the compiled build of lifecycle.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.exchange.forwarding cimport Forwarding
from tollhouse.exchange.relay cimport Relay   # the names of inherited methods' signatures (bound as callbacks)
from tollhouse.pipeline cimport Reply
from tollhouse.routing cimport RouteTarget

cdef Clock CLOCK


cdef class Exchange(Forwarding):
    @cython.locals(route=RouteTarget)
    cpdef start(self)
    cpdef start_local(self)
    cpdef run_local(self)
    cpdef respond(self, int status, list lines, body)
    cpdef feed_body(self, chunk)
    cpdef refuse_body(self, Reply reply)
    cpdef body_complete(self)
    cpdef client_gone(self)


cpdef Exchange new_exchange(conn, state)
