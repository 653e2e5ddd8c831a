# C declarations for the compiled build of relay.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.exchange.codec cimport Codec
from tollhouse.exchange.request cimport Request
from tollhouse.pipeline cimport Reply

cdef frozenset _NO_BODY_STATUS


cdef class Relay(Request):
    @cython.locals(codec=Codec)
    cpdef relay_head(self, int status, list headers, connection_tokens, content_length, bint chunked)
    @cython.locals(codec=Codec)
    cpdef write_head(self, body=*)
    @cython.locals(codec=Codec)
    cpdef upstream_body(self, chunk)
    @cython.locals(codec=Codec)
    cpdef end_body(self)
    cpdef upstream_trailers(self, list lines, bint relayed=*)
    cpdef observed_complete(self)
    @cython.locals(codec=Codec)
    cpdef answer(self, Reply reply)
    cpdef abort_upstream(self)
