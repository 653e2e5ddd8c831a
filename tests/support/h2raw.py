"""A raw HTTP/2 client for sending bad input: frames built with hyperframe and HPACK
blocks with hpack (the Python `h2` project's parts), written as they are, whatever
RFC 9113 says. Only for the adversarial tests; well-behaved clients are real tools
(curl, nghttp, h2load, grpcio)."""
from __future__ import annotations

import socket
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11


class Response:
    def __init__(self):
        self.status = None
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.body = b""
        self.reset = None   # the RST_STREAM code, if the stream was reset
        self.ended = False

    def header(self, name: str):
        for n, v in self.headers:
            if n == name:
                return v
        return None


class RawH2:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self.responses: dict[int, Response] = {}
        self.authority = f"{host}:{port}"

    # writing ---------------------------------------------------------------
    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def start(self, settings: dict | None = None) -> "RawH2":
        self.raw(PREFACE)
        self.send(SettingsFrame(0, settings or {}))
        return self

    def block(self, pairs) -> bytes:
        return self.encoder.encode([(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v)
                                    for n, v in pairs])

    def request_pairs(self, path="/", method="GET", extra=()) -> list:
        return [(":method", method), (":scheme", "http"), (":authority", self.authority), (":path", path), *extra]

    def request(self, stream_id: int, path="/", method="GET", extra=(), body: bytes | None = None,
                end_stream: bool | None = None) -> None:
        flags = ["END_HEADERS"]
        if end_stream if end_stream is not None else body is None:
            flags.append("END_STREAM")
        frames = [HeadersFrame(stream_id, self.block(self.request_pairs(path, method, extra)), flags=flags)]
        if body is not None:
            frames.append(DataFrame(stream_id, body, flags=["END_STREAM"] if end_stream is not False else []))
        self.send(*frames)

    def headers_frame(self, stream_id, pairs, flags=("END_HEADERS", "END_STREAM")) -> HeadersFrame:
        return HeadersFrame(stream_id, self.block(pairs), flags=list(flags))

    # reading ---------------------------------------------------------------
    def next_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or None when the connection closed or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(self.buf[9:9 + length]))
                    self.buf = self.buf[9 + length:]
                    self._track(frame)
                    return frame
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return None
            except OSError:
                data = b""
            if not data:
                self.closed = True
                if len(self.buf) < 9:
                    return None
            self.buf += data

    def reply(self, *frames: Frame) -> None:
        """Frames a well-behaved peer sends back (ACKs, window updates): lost if the gateway cut us off."""
        try:
            self.send(*frames)
        except OSError:
            self.closed = True

    def _track(self, frame: Frame) -> None:
        if isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.reply(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.reply(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        sid = frame.stream_id
        if sid == 0:
            return
        r = self.responses.setdefault(sid, Response())
        if isinstance(frame, HeadersFrame):
            pairs = [(n.decode() if isinstance(n, bytes) else n, v.decode() if isinstance(v, bytes) else v)
                     for n, v in self.decoder.decode(frame.data)]
            status = dict(pairs).get(":status")
            if status is not None and status.startswith("1"):
                pass   # an interim head
            elif r.status is None and status is not None:
                r.status = int(status)
                r.headers = [p for p in pairs if not p[0].startswith(":")]
            else:
                r.trailers = pairs
            if "END_STREAM" in frame.flags:
                r.ended = True
        elif isinstance(frame, DataFrame):
            r.body += frame.data
            if frame.flow_controlled_length:
                # Keep the windows open: these tests read everything they are sent.
                self.reply(WindowUpdateFrame(0, frame.flow_controlled_length),
                           WindowUpdateFrame(sid, frame.flow_controlled_length))
            if "END_STREAM" in frame.flags:
                r.ended = True
        elif isinstance(frame, RstStreamFrame):
            r.reset = frame.error_code

    def response(self, stream_id: int, timeout: float = 5.0) -> Response:
        """Read until the stream ended or was reset (or the connection closed)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.responses.get(stream_id)
            if r is not None and (r.ended or r.reset is not None):
                return r
            if self.next_frame(max(0.0, deadline - time.monotonic())) is None:
                return self.responses.setdefault(stream_id, Response())

    def until_goaway(self, timeout: float = 5.0) -> GoAwayFrame | None:
        deadline = time.monotonic() + timeout
        while self.goaway is None:
            if self.next_frame(max(0.0, deadline - time.monotonic())) is None:
                break
        return self.goaway

    def until_closed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.next_frame(max(0.0, deadline - time.monotonic()))
        return self.closed

    def close(self) -> None:
        self.sock.close()


__all__ = ["RawH2", "PREFACE", "ContinuationFrame", "DataFrame", "GoAwayFrame", "HeadersFrame", "RstStreamFrame",
           "SettingsFrame", "WindowUpdateFrame", "PingFrame"]
