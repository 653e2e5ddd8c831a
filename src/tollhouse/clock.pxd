# C declarations for the compiled build of clock.py (setup.py).
cdef class Clock:
    cdef public double now
