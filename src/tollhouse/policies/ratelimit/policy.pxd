# C declarations for the compiled build of policy.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.pipeline cimport Policy
from tollhouse.exchange.request cimport Request
from tollhouse.policies.ratelimit.algorithms cimport LimitTable, evaluate


cdef class _Limit:
    cdef public int algo
    cdef public long long limit, burst
    cdef public double window
    cdef public object spec, script_args, spec_id, store_prefix, key_kind, header, name, policy_item
    cdef public object partition_args, scope, cost
    cdef public LimitTable table, local_table
    cdef public dict store_keys

    cpdef tuple for_store(self, str key)


cpdef str _key(_Limit lim, exchange)


cdef class RateLimitPolicy(Policy):
    cdef public object limiter, route, fixed, tiers, prefix, policy_header
    cdef public bint memory, tiered
    cdef public _Limit single
    cdef public dict consumer_limits

    cpdef list _own_limits(self, identity)

    cpdef _limits(self, exchange)
    @cython.locals(lim=_Limit, ok=bint, now=double, table=LimitTable, store_key=list, keys=list)
    cpdef on_request(self, Request exchange)
    cpdef admit(self, Request exchange, _Limit lim, tuple decision, result)
    cpdef outcome_of(self, value)
    @cython.locals(lim=_Limit, d=tuple, limit=cython.longlong, remaining=cython.longlong, reset=cython.longlong,
                   reset_at=cython.double)
    cpdef on_response(self, Request exchange)
