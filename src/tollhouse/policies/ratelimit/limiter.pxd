# C declarations for the compiled build of limiter.py (setup.py); the .py stays the source.
cimport cython

from tollhouse.pipeline cimport Deferred
from tollhouse.store.batch cimport TickBatcher


cdef class _AllDone:
    cdef public Py_ssize_t left
    cdef public object done


cdef class _Answer:
    cdef public object limiter, batch, command, done


cdef class RedisLimiter:
    cdef public object store, client, stats, failure_mode, guard, instance_id, announcer, local, regions
    cdef public TickBatcher batcher
    cdef public bint cluster
    cdef public double timeout
    cdef public long live_instances

    cpdef check(self, list limits, list store_keys, policy, exchange, list keys, costs=*)
    @cython.locals(item=tuple, limits=list, store_keys=list, keys_all=list, profiles=dict, profile_args=list,
                   run_args=list, count=Py_ssize_t)
    cpdef _call(self, list batch, done)
    @cython.locals(pos=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, at=Py_ssize_t, item=tuple, limits=list,
                   fut=Deferred, decisions=list)
    cpdef answered(self, list batch, tuple command, list flat, error, done)
