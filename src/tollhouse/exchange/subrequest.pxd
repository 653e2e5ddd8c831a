# C declarations for the compiled build of subrequest.py (setup.py); the .py stays the source.
# Every aggregated or federated request starts subrequests: their setup, their origin and the
# codec that keeps their answers run as C.
cimport cython

from tollhouse.exchange.codec cimport Codec
from tollhouse.exchange.lifecycle cimport Exchange, new_exchange
from tollhouse.exchange.request cimport Request
from tollhouse.flow cimport FlowControl, WorkerCore
from tollhouse.routing cimport RouteTarget

cdef frozenset _BODY_METHODS


cdef class SubResponse:
    cdef public object status, headers, body, local, elapsed


cdef class KeepCodec(Codec):
    pass


cdef class Completion:
    cpdef arrived(self, Py_ssize_t index, answer)


cdef class SubrequestOrigin:
    cdef public WorkerCore worker
    cdef public list received
    cdef public object peer_ip, peer_ip_bytes, scheme, forwarded, transport, done
    cdef public Completion then
    cdef public Py_ssize_t index
    cdef public bint peer_trusted
    cdef public FlowControl flow

    cpdef setup(self, WorkerCore worker, Exchange parent)
    cpdef write(self, data)
    cpdef abort(self)
    @cython.locals(then=Completion)
    cpdef exchange_finished(self, Exchange exchange)


@cython.locals(answer=SubResponse)
cpdef SubResponse _answer(SubrequestOrigin origin, Exchange exchange)


@cython.locals(ex=Exchange, origin=SubrequestOrigin, route=RouteTarget, q=Py_ssize_t, routes=dict)
cpdef Exchange begin_subrequest(WorkerCore worker, pool, method, target, headers, body, timeout, Exchange parent,
                                host, observe, span, step, Completion then, Py_ssize_t index)
