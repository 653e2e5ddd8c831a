# C declarations for the compiled build of pipeline.py (setup.py); the .py stays the source.
# Policy is an extension type so that built-in policies can be too (their hooks
# then run as C); plugins subclass it from Python as before.

cimport cython

from tollhouse.exchange.request cimport Request

cdef class Reply:
    cdef public int status
    cdef public object headers, body, problem_fields, lines


cdef class Deferred:
    cdef public object chain, exchange, start, proceed, answer

    cpdef resolve(self, value)
    cpdef fail(self, error)


cdef class Tracer:
    pass


cdef class Policy:
    cdef public object config, context
    cdef public int slot

    cpdef on_request(self, Request exchange)
    cpdef on_response(self, Request exchange)
    cpdef outcome_of(self, value)


cdef class Chain:
    cdef public tuple request_hooks, response_hooks, observed, requesters, outcome_names, outcome_metrics, logged
    cdef public list policies

    cpdef run(self, Request exchange, proceed, answer, int start=*)
    @cython.locals(deferred=Deferred)
    cpdef handle(self, Request exchange, result, int i, proceed, answer)
    cpdef _after(self, Request exchange, result, error, int start, proceed, answer)
    @cython.locals(policy=Policy, labels=list)
    cpdef tuple labels(self, slots)
    cpdef dict named_outcomes(self, slots)
    cpdef dict logged_values(self, slots)
