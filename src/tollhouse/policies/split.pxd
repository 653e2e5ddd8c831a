# C declarations for the compiled build of split.py (setup.py); the .py stays the source.
# The chooser runs on every request of a split route: compiled, its fields are C fields.
cimport cython

from tollhouse.clock cimport Clock
from tollhouse.exchange.request cimport Request

cdef Clock CLOCK


cdef class SplitChooser:
    cdef public list pools, weights, forced, bounds, keys, file
    cdef public object sticky, cookie, source, outcome
    cdef public dict counters, sides_of
    cdef public double set_at, checked_at
    cdef public long long total

    @cython.locals(i=cython.Py_ssize_t, counters=dict)
    cpdef choose(self, Request exchange)
    cpdef Py_ssize_t _forced(self, Request exchange)
    cpdef Py_ssize_t _by_cookie(self, Request exchange)
    cpdef Py_ssize_t _place(self, caller)
    cpdef bint _usable(self, Py_ssize_t i)
    cpdef _work_out(self)
