# C declarations for the compiled build of http2.py (setup.py); the .py stays the source.
from tollhouse.exchange.codec cimport Codec, UpstreamCodec
from tollhouse.exchange.http1 cimport keep_request_id, target_error
from tollhouse.exchange.request cimport Request

cdef dict GRPC_STATUS

cpdef finalise_head(Request ex, authority, limits, Py_ssize_t count, bint oversize)
cpdef _refused(Request ex, reply)


cdef class Http2Codec(Codec):
    pass


cdef class Http2Upstream(UpstreamCodec):
    pass
