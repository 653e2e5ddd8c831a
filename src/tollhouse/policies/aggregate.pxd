# C declarations for the compiled build of aggregate.py (setup.py); the .py stays the source.
# The fan-out and the merge run on every request of an aggregate route: compiled, and the
# calls between them, their exchange and the worker's metrics made in C.
cimport cython

from tollhouse.exchange.lifecycle cimport Exchange
from tollhouse.exchange.subrequest cimport Completion, SubResponse, begin_subrequest
from tollhouse.observability.metrics cimport Histogram, Tally
from tollhouse.pipeline cimport Policy


cdef class _Backend:
    cdef public object name, upstream, parts, fixed, timeout, required, default, labels, key
    cdef public dict results
    cdef public Histogram duration

    @cython.locals(out=list)
    cpdef bytes target(self, Exchange exchange)


cdef class AggregatePolicy(Policy):
    cdef public tuple backends
    cdef public object all_or_nothing, merge, route_name

    @cython.locals(fanout=_Fanout, b=_Backend, i=Py_ssize_t)
    cpdef respond(self, Exchange exchange, body)
    cpdef answered(self, Exchange exchange, list answers, double started)
    @cython.locals(b=_Backend, merged=dict, errors=dict, backends=tuple, i=Py_ssize_t, tally=Tally)
    cpdef _merged(self, Exchange exchange, list answers, double started)
    cpdef _respond(self, Exchange exchange, out, dict errors)


cdef class _Fanout(Completion):
    cdef AggregatePolicy policy
    cdef Exchange exchange
    cdef list answers
    cdef Py_ssize_t left
    cdef double started

    cpdef setup(self, AggregatePolicy policy, Exchange exchange, Py_ssize_t count)
    cpdef arrived(self, Py_ssize_t index, answer)


@cython.locals(b=_Backend, parts=list, i=Py_ssize_t, answer=SubResponse)
cpdef bytes _spliced(tuple backends, list answers, dict merged, dict errors)
@cython.locals(sub=SubResponse)
cpdef tuple _judge(answer, bint keep)
cpdef bint _is_json(bytes body)
