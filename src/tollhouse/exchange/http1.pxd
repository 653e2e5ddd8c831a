# C declarations for the compiled build of http1.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.exchange.codec cimport Codec, UpstreamCodec
from tollhouse.exchange.request cimport Request
from tollhouse.routing cimport RouteTarget
from tollhouse.upstream.pool cimport TargetPool

cdef dict _NORMAL_PATHS, _SANE_HOSTS

cpdef bint _sane_host(host)
cpdef _length_unknown(Request ex)
cpdef _framing_error(Request ex, limits)
cpdef target_error(Request ex)
cpdef keep_request_id(Request ex)
cpdef bytes last_chunk(Request ex)


cdef class Http1Codec(Codec):
    cpdef finalise_head(self, Request ex, limits)


cdef class Http1Upstream(UpstreamCodec):
    @cython.locals(route=RouteTarget, pool=TargetPool, parts=list)
    cpdef list request_head(self, Request ex, target, method, path)
