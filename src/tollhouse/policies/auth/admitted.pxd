# C declarations for the compiled build of admitted.py (setup.py); the .py stays the source.

cimport cython

from tollhouse.pipeline cimport Policy
from tollhouse.exchange.request cimport Request


cdef class AdmittedTokens(Policy):
    cdef public object admitted, bearer, sessions
    cdef public int authorization   # where the exchange keeps the Authorization header (registry.noted_index)
    cdef public int cookie          # ... and the Cookie header

    @cython.locals(now=double, hit=tuple, entry=list, made=tuple)
    cpdef on_request(self, Request exchange)


cpdef identify(Request exchange, identity)
