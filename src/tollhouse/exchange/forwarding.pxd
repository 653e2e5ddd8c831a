# C declarations for the compiled build of forwarding.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.exchange.codec cimport Codec, UpstreamCodec
from tollhouse.exchange.relay cimport Relay
from tollhouse.routing cimport RouteTarget
from tollhouse.upstream.pool cimport TargetPool, UpstreamConnection, UpstreamPool

cdef Clock CLOCK
cdef frozenset _IDEMPOTENT


cdef class Forwarding(Relay):
    @cython.locals(pool=UpstreamPool, target=TargetPool)
    cpdef proxy(self)
    cpdef use_target(self, TargetPool target)
    @cython.locals(route=RouteTarget, codec=UpstreamCodec, client_codec=Codec, parts=list)
    cpdef send_upstream(self, UpstreamConnection conn)
    @cython.locals(up=UpstreamConnection, codec=UpstreamCodec)
    cpdef forward_body(self, chunk)
    @cython.locals(up=UpstreamConnection, codec=UpstreamCodec)
    cpdef forward_body_end(self)
    cpdef upstream_writable(self, bint writable)
    @cython.locals(route=RouteTarget, up=UpstreamConnection)
    cpdef upstream_head(self, conn, int status, headers, keep_alive)
    @cython.locals(target=TargetPool)
    cpdef upstream_done(self, conn)
    @cython.locals(conn=UpstreamConnection)
    cpdef abort_upstream(self)
    @cython.locals(pool=UpstreamPool)
    cpdef finish(self)
