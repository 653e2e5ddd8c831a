# C declarations for the compiled build of tracing.py (setup.py); the .py stays the source.
# The sampled path runs cold (1 % of requests): as C with C attributes it touches far
# less memory than bytecode does, and cold memory is what it costs (docs/benchmarks.md).

from tollhouse.pipeline cimport Tracer


cdef class TracingFactory:
    cdef public object config, exporter, kind, ratio, log_unsampled, gaps
    cdef public int traceparent


cdef class SpanTracer(Tracer):
    cdef public object exporter, trace_id, span_id, parent_id, events, attempts, current, backend, steps
    cdef public long long start, end


cdef class SubrequestTracer(SpanTracer):
    pass
