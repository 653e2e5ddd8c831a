"""Span and trace ids drawn ahead in a pool (tracing._span_id): W3C-shaped, never zero,
distinct, and drawn anew by a forked worker rather than copied from its parent."""
import os
import re

from tollhouse.observability import tracing


def test_span_ids_are_sixteen_hex_digits_nonzero_and_distinct():
    ids = [tracing._span_id() for _ in range(5000)]   # several refills of the pool
    assert all(re.fullmatch(rb"[0-9a-f]{16}", i) and i != b"0" * 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_ids():
    tracing._span_id()   # the parent's pool is full now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: what a worker forked from this process would draw next
        os.write(write, b"".join(tracing._span_id() for _ in range(8)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 1024)
    os.waitpid(pid, 0)
    os.close(read)
    parent = b"".join(tracing._span_id() for _ in range(8))
    assert len(child) == 128 and child != parent
