# C declarations for the compiled build of algorithms.py (setup.py); the .py stays the source.
cimport cython


@cython.locals(interval=cython.double, tat=cython.double, new_tat=cython.double, allow_at=cython.double,
               index=cython.longlong, window_end=cython.double, cur=cython.longlong, prev=cython.longlong,
               weight=cython.double, estimate=cython.double, remaining=cython.longlong, room=cython.double)
cpdef tuple evaluate(int algo, long long limit, double window, long long burst, state, double now,
                     long long cost=*)


cdef class LimitTable:
    cdef public dict current, old
    cdef public double rotate_at, period

    cpdef get(self, key, double now)
