"""A subrequest's codec keeps the response instead of framing it."""
import asyncio

from tollhouse.exchange.lifecycle import Exchange
from tollhouse.exchange.request import RAW
from tollhouse.exchange.subrequest import KEEP, SubrequestOrigin


def test_the_keep_codec_frames_nothing_and_keeps_the_body():
    from tollhouse.flow import WorkerCore

    loop = asyncio.new_event_loop()
    loop.close()
    origin = SubrequestOrigin(WorkerCore(loop))
    ex = Exchange(origin, None)
    assert ex.codec is KEEP
    KEEP.frame_relayed(ex, None, True)
    assert ex.mode == RAW
    KEEP.write_head(ex, b"")
    KEEP.write_body(ex, b"ab")
    KEEP.write_body(ex, b"c")
    KEEP.end_body(ex)
    assert origin.received == [b"ab", b"c"]
