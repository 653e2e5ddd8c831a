# C declarations for the compiled build of metrics.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.exchange.lifecycle cimport Exchange
from tollhouse.pipeline cimport Chain
from tollhouse.routing cimport RouteTarget

cdef tuple _HTTP2_KEY, _GRPC_CODES


@cython.locals(i=Py_ssize_t, bound=double)
cpdef Py_ssize_t bucket(double value)


cdef class Tally:
    cdef public double value


cdef class Histogram:
    cdef public list counts
    cdef public double sum

    cpdef observe(self, double value)


cdef class RouteStats:
    cdef public object name
    cdef public dict counts, outcomes
    cdef public Histogram duration, upstream


cdef class Stats:
    cdef public dict routes, upstream_duration, counters, gauges, derived, consumers, denied, histograms, tallies
    cdef public RouteStats unrouted
    cdef public long long active_connections, active_requests

    cpdef Histogram upstream_histogram(self, upstream)
    cpdef observe(self, name, labels, double seconds)
    @cython.locals(h=Histogram)
    cpdef Histogram histogram(self, name, labels)
    cpdef inc(self, name, labels=*, by=*)
    @cython.locals(counters=dict)
    cpdef count(self, tuple key, by=*)

    @cython.locals(ex=Exchange, route=RouteTarget, stats=RouteStats, hist=Histogram, duration=cython.double,
                   upstream=cython.double, counts=dict, consumers=dict, denied=dict, status=cython.int, n=object,
                   slots=list, chain=Chain, counters=dict, labels=tuple, metrics=tuple, i=cython.Py_ssize_t)
    cpdef fold(self, list exchanges)
