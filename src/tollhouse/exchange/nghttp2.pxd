# C declarations of the nghttp2 binding (nghttp2.pyx), so that the compiled HTTP/2
# connections (server/http2.py) call their session, and it calls them back, in C.
# A module that cimports this one is built only where nghttp2 is (setup.py).
from libc.stdint cimport int32_t, uint32_t


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session


cdef class SessionOwner:
    """What a session calls back (the doc of nghttp2.pyx lists the calls)."""
    cpdef h2_headers(self, int stream_id, int category, list headers, bint end_stream, bint oversize, method, path,
                     authority)
    cpdef h2_data(self, int stream_id, data)
    cpdef h2_end(self, int stream_id)
    cpdef h2_closed(self, int stream_id, int code)
    cpdef h2_drained(self, int stream_id)
    cpdef h2_goaway(self, int last_stream_id, int code)
    cpdef h2_settings(self)


cdef class Session:
    cdef nghttp2_session *session
    cdef readonly bint server
    cdef dict outgoing
    cdef list block
    cdef object pseudo_method, pseudo_path, pseudo_authority
    cdef size_t block_size
    cdef bint block_oversize
    cdef public size_t max_header_list_size
    cdef public long long resets_received
    cdef readonly bint calmed
    cdef long long max_resets_per_second, resets_in_window
    cdef double reset_window
    cdef set reset_after_end
    cdef SessionOwner owner
    cdef object failure

    cdef int _failed(self, e) noexcept
    cpdef receive(self, bytes data)
    cpdef consume(self, int32_t stream_id, size_t length)
    cpdef bytes pending(self)
    cpdef bint wants(self)
    cpdef bint respond(self, int32_t stream_id, int status, list lines, bytes request_id, bytes body, bint more)
    cpdef interim(self, int32_t stream_id, int status)
    cdef int _submit_lines(self, int32_t stream_id, bytes status, list lines, list pairs, void *provider, int how)
    cdef _submit_trailer(self, int32_t stream_id, list lines)
    cpdef bint send_data(self, int32_t stream_id, bytes chunk)
    cpdef end_data(self, int32_t stream_id, trailers=*)
    cpdef Py_ssize_t queued(self, int32_t stream_id)
    cpdef reset_when_ended(self, int32_t stream_id)
    cpdef reset(self, int32_t stream_id, uint32_t code)
    cpdef goaway(self, uint32_t code, bint graceful=*)
    cpdef bint remote_closed(self, int32_t stream_id)
