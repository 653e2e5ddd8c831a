"""How an exchange's response reaches its client: a codec, chosen once per connection.

A codec holds no per-request state (one object serves every exchange of its
kind, so choosing it allocates nothing): it frames what the relay hands it
and writes to the exchange's connection. `mode` on the exchange says how the
body is delimited (NONE: no body; RAW: as it comes, its length known or the
connection's end; CHUNKED: its length unknown until it ends), which the codec
chooses and then honours.
"""
from __future__ import annotations


class Codec:
    """The framing of responses towards a client (HTTP/1.1 is `http1.HTTP1`)."""

    __slots__ = ()

    def frame_relayed(self, exchange, content_length, chunked: bool) -> None:
        """Choose `exchange.mode` for a relayed response whose upstream sent `content_length`
        (bytes, or None) and was or was not chunked; a relayed Content-Length that the
        framing cannot keep is removed from `exchange.response_headers`."""
        raise NotImplementedError

    def frame_unknown_length(self, exchange) -> None:
        """A body filter changes the body's length as it streams: frame it as such."""
        raise NotImplementedError

    def write_head(self, exchange, body: bytes) -> None:
        """Write `exchange.status` and `exchange.response_headers`, with `body` when the
        whole response is at hand (a local answer)."""
        raise NotImplementedError

    def write_body(self, exchange, chunk: bytes) -> None:
        """Write a piece of the body (only called when `exchange.mode` is not NONE)."""
        raise NotImplementedError

    def end_body(self, exchange) -> None:
        """The body is complete."""
        raise NotImplementedError

    def write_continue(self, exchange) -> None:
        """An interim 100 (Continue): the client may send the body it held back."""
        raise NotImplementedError

    def write_answer(self, exchange, body: bytes) -> None:
        """Write the gateway's own answer (a refusal, an error, a local endpoint's reply),
        head and body at once: a codec may translate it (HTTP/2 answers a gRPC call's
        refusal in gRPC's terms)."""
        self.write_head(exchange, body)


class UpstreamCodec:
    """The framing of requests towards an upstream (HTTP/1.1 is `http1.HTTP1_UPSTREAM`),
    one object per upstream protocol, held by each target's pool."""

    __slots__ = ()

    def request_head(self, exchange, target, method: bytes, path: bytes) -> list:
        """The parts of the request head up to its framing (see Http1Upstream)."""
        raise NotImplementedError

    def frame_body(self, exchange, parts: list, chunks) -> None:
        """End the head in `parts` with the body's framing, and add the body read so far."""
        raise NotImplementedError

    def write_body(self, exchange, outgoing, chunk: bytes) -> None:
        """A piece of the request body, to `outgoing` (the connection's Gathered)."""
        raise NotImplementedError

    def end_body(self, exchange, outgoing) -> None:
        """The request body is complete."""
        raise NotImplementedError
