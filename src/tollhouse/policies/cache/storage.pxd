# C declarations for the compiled build of storage.py (setup.py); the .py stays the source.

cdef class Entry:
    cdef public int status
    cdef public object lines, body, etag, last_modified, route, path, tags, vary, block
    cdef public double stored_at, age, fresh_until, stale_until, error_until, expires_at
    cdef public bint shared
    cdef public long long size


cdef class MemoryCache:
    cdef public object entries
    cdef public long long max_bytes, size

    cpdef get(self, key, double now)
    cpdef put(self, key, Entry entry)
    cpdef _drop(self, key)
