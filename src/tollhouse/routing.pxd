# C declarations for the compiled build of routing.py (setup.py); the .py stays the source.
from tollhouse.pipeline cimport Chain
from tollhouse.upstream.pool cimport UpstreamPool


cdef class RouteTarget:
    cdef public object name, host, methods, path, prefix, template, rewrite, rewrite_regex, name_bytes
    cdef public Chain chain
    cdef public object match_key, stats, local, chooser
    cdef public int index, specificity
    cdef public double timeout, first_wait
    cdef public bint strip_prefix, preserve_host, path_kept
    cdef public UpstreamPool upstream

    cpdef UpstreamPool choose_pool(self, exchange)


cdef class RouteTable:
    cdef public object routes, _exact_hosts, _wildcards, _any, _cache
    cdef public bint _has_hosts

    cpdef tuple lookup(self, host_header, path, method)
