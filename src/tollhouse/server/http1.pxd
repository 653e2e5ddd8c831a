# C declarations for the compiled build of http1.py (setup.py); the .py stays the source.
from tollhouse.pipeline cimport Reply
from tollhouse.request cimport Request

cdef dict _NORMAL_PATHS, _SANE_HOSTS
cdef frozenset _NO_BODY_STATUS

cpdef bint _sane_host(host)


cdef class Http1Exchange(Request):
    cpdef finalise_head(self, limits)
    cpdef framing_error(self, limits)
    cpdef target_error(self)
    cpdef relay_head(self, int status, list headers, connection_tokens, content_length, bint chunked)
    cpdef write_head(self, body=*)
    cpdef upstream_body(self, chunk)
    cpdef end_body(self)
    cpdef answer(self, Reply reply)
    cpdef abort_upstream(self)
