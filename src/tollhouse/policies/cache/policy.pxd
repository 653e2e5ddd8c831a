# C declarations for the compiled build of policy.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.pipeline cimport Policy, Reply
from tollhouse.exchange.request cimport Request
from tollhouse.policies.cache.storage cimport Entry, MemoryCache


cdef class CachePolicy(Policy):
    cdef public object cache, route_name, vary_names, route_bytes
    cdef public bint consumer_scope, memory
    cdef public tuple conditionals
    cdef public int range, cookie, authorization   # where the exchange keeps these headers (registry.noted_index)

    cpdef primary_key(self, Request exchange)
    cpdef bypass(self, Request exchange)
    @cython.locals(shared_only=bint, credentials=bint, noted=list, now=double, storage=MemoryCache, entry=Entry)
    cpdef on_request(self, Request exchange)
    cpdef decide(self, Request exchange, primary, key, Entry entry, bint shared_only, double now)
    @cython.locals(seconds=cython.longlong, reply=Reply)
    cpdef hit(self, Request exchange, Entry entry, double now, label)
    cpdef on_response(self, Request exchange)
