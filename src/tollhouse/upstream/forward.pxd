# C declarations for the compiled build of forward.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.routing cimport RouteTarget
from tollhouse.server.http1 cimport Http1Exchange
from tollhouse.upstream.pool cimport TargetPool, UpstreamConnection, UpstreamPool

cdef Clock CLOCK
cdef frozenset _IDEMPOTENT


cdef class Forwarding(Http1Exchange):
    @cython.locals(pool=UpstreamPool, target=TargetPool)
    cpdef proxy(self)
    cpdef use_target(self, TargetPool target)
    @cython.locals(target=TargetPool, route=RouteTarget)
    cpdef send_upstream(self, UpstreamConnection conn)
    @cython.locals(up=UpstreamConnection)
    cpdef forward_body(self, chunk)
    @cython.locals(up=UpstreamConnection)
    cpdef forward_body_end(self)
    @cython.locals(route=RouteTarget)
    cpdef upstream_head(self, conn, int status, headers, keep_alive)
    @cython.locals(target=TargetPool)
    cpdef upstream_done(self, UpstreamConnection conn)
    @cython.locals(conn=UpstreamConnection)
    cpdef abort_upstream(self)
    @cython.locals(pool=UpstreamPool)
    cpdef finish(self)
