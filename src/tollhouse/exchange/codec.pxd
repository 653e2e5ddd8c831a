# C declarations for the compiled build of codec.py (setup.py); the .py stays the source.
from tollhouse.exchange.request cimport Request


cdef class Codec:
    cpdef frame_relayed(self, Request exchange, content_length, bint chunked)
    cpdef frame_unknown_length(self, Request exchange)
    cpdef write_head(self, Request exchange, body)
    cpdef write_body(self, Request exchange, chunk)
    cpdef end_body(self, Request exchange)
    cpdef write_continue(self, Request exchange)
    cpdef write_answer(self, Request exchange, body)


cdef class UpstreamCodec:
    cpdef list request_head(self, Request exchange, target, method, path)
    cpdef frame_body(self, Request exchange, list parts, chunks)
    cpdef write_body(self, Request exchange, outgoing, chunk)
    cpdef end_body(self, Request exchange, outgoing)
