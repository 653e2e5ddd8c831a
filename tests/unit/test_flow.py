"""Flow control and gathered writes against a recording transport (no sockets)."""
import asyncio

from tollhouse.flow import BODY_WAITING, CLIENT_FULL, PIPELINE, FlowControl, Gathered, WorkerCore

GATHER_LIMIT = 64 * 1024   # flow.GATHER_LIMIT (a C constant in the compiled build)


class _Transport:
    def __init__(self):
        self.calls = []
        self.written = []

    def pause_reading(self):
        self.calls.append("pause")

    def resume_reading(self):
        self.calls.append("resume")

    def write(self, data):
        self.written.append(bytes(data))

    def writelines(self, parts):
        self.written.append(b"".join(parts))

    def is_closing(self):
        return False


def test_reading_stops_at_the_first_reason_and_resumes_with_the_last():
    t = _Transport()
    flow = FlowControl(t)
    flow.pause(PIPELINE)
    flow.pause(CLIENT_FULL)
    flow.resume(PIPELINE)
    assert t.calls == ["pause"]
    flow.resume(BODY_WAITING)          # a reason never given changes nothing
    flow.resume(CLIENT_FULL)
    assert t.calls == ["pause", "resume"]


def test_a_stand_in_connection_has_nothing_to_pause():
    flow = FlowControl(None)
    flow.pause(PIPELINE)
    flow.resume(PIPELINE)   # no transport to call: no error


def test_writes_of_one_loop_iteration_leave_together():
    loop = asyncio.new_event_loop()
    try:
        worker = WorkerCore(loop)
        t = _Transport()
        out = Gathered(t, worker)
        out.write(b"a")
        out.write(b"b")
        assert t.written == []
        loop.run_until_complete(asyncio.sleep(0))   # the outbox is flushed once the batch is done
        assert b"".join(t.written) == b"ab" and len(t.written) == 1
    finally:
        loop.close()


def test_a_big_stream_writes_through_past_the_gather_limit():
    loop = asyncio.new_event_loop()
    try:
        worker = WorkerCore(loop)
        t = _Transport()
        out = Gathered(t, worker)
        out.write(b"x" * (GATHER_LIMIT + 1))
        assert sum(map(len, t.written)) == GATHER_LIMIT + 1   # at once: backpressure sees it
    finally:
        loop.close()
