"""The response towards the client, whatever its framing: an upstream's head and
body relayed (with the observer and the route's response policies seeing them),
or the gateway's own answer. Bytes are the connection's codec's to frame.
"""
from __future__ import annotations

import time

from ..pipeline import Reply
from .request import COMPLETE, HEAD_SENT, NONE, WAITING, Request, find_header, tokens, without

_NO_BODY_STATUS = frozenset((204, 304))


class Relay(Request):
    """The response side of an exchange (see exchange/codec.py for the framing)."""

    __slots__ = ()

    def relay_head(self, status: int, headers: list, connection_tokens, content_length, chunked: bool) -> None:
        """An upstream's response head (hop-by-hop and framing removed by the upstream
        connection): let the codec choose the framing, the observer and the response
        hooks see it, write it."""
        if connection_tokens is not None:
            headers = without(headers, tokens(connection_tokens))
        self.status = status
        self.response_headers = headers
        codec = self.codec
        if self.method == b"HEAD" or status in _NO_BODY_STATUS:
            self.mode = NONE
        else:
            if content_length is None and not chunked:
                self.upstream_delimited = True   # the upstream's body ends with its connection (RFC 9112 §6.3)
            codec.frame_relayed(self, content_length, chunked)
        observers = self.observers
        if observers is not None:
            # Observers see the upstream's own head, before any policy changes it.
            for observer in observers:
                substitute = observer.head(self, status, content_length)
                if substitute is not None:   # stale_if_error: a stored response instead of this failure
                    self.abort_upstream()
                    self.answer(substitute)
                    return
        hooks = self.route.chain.response_hooks
        if hooks:
            for hook in hooks:
                hook(self)
            if self.body_filters is not None and self.mode != NONE:
                codec.frame_unknown_length(self)   # the body changes length as it streams
        self.write_head()

    def upstream_trailers(self, lines: list, relayed: bool = True) -> None:
        """An HTTP/2 upstream's trailers: relayed after the body to an HTTP/2 client (dropped
        towards HTTP/1.1); a gRPC status among them is noted (`relayed` False: the lines
        are a trailers-only head's, relayed as the head)."""
        if relayed:
            self.trailers = lines
        status = find_header(lines, b"grpc-status")
        if status is not None and status.isdigit():
            self.grpc_status = int(status)

    def not_modified(self, lines: list[bytes]) -> None:
        """Answer 304 with `lines` instead of the upstream's response, whose body still
        arrives (for the cache) but is not relayed."""
        self.status = 304
        lines.append(self.worker.date_line)   # RFC 9110 §6.6.1: an origin-like answer has Date
        self.response_headers = lines
        self.mode = NONE

    def write_head(self, body: bytes = b"") -> None:
        """Write the response head (with `body` when the whole response is at hand): a
        policy that answers an upgrade itself writes its 101 so."""
        if self.tracer is not None:
            self.tracer.responding(self)   # its last word on the head (the debug header's Server-Timing)
        self.response = HEAD_SENT
        codec = self.codec
        codec.write_head(self, body)

    def upstream_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        observers = self.observers
        if observers is not None:
            for observer in observers:
                observer.body(chunk)
        if self.body_filters is not None:
            chunk = filtered(self.body_filters, chunk)
            if not chunk:
                return
        if self.mode != NONE:
            codec = self.codec
            codec.write_body(self, chunk)
            self.bytes_sent += len(chunk)

    def end_body(self) -> None:
        """The body ended: flush the body filter, end the framing."""
        codec = self.codec
        if self.body_filters is not None and self.mode != NONE:
            tail = filters_finished(self.body_filters)
            if tail:
                codec.write_body(self, tail)
                self.bytes_sent += len(tail)
        codec.end_body(self)

    def observed_complete(self) -> None:
        """The upstream's body is complete: the observers are told."""
        for observer in self.observers:
            observer.complete(self)

    # ------------------------------------------------------------- local answers
    def answer(self, reply: Reply) -> None:
        """Send a local reply (from a policy or the gateway itself)."""
        if self.finished:
            return
        if self.response != WAITING:
            self.conn.abort()
            return
        if self.upstream is not None:
            self.abort_upstream()
        if self.observers is not None and reply.status >= 500:
            reply = substitute(self.observers, self, reply)   # the cache's stale_if_error
        if reply.problem_fields is None:
            body, content_type = reply.body, None
        else:
            body, content_type = reply.render_body(self.request_id.decode() if self.request_id else "")
        self.status = reply.status
        headers = reply.lines if reply.lines is not None else []   # a reply is answered once: its list is ours
        if reply.headers:
            headers += [b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        if content_type:
            headers.append(b"content-type: %s\r\n" % content_type.encode())
        no_body = reply.status in _NO_BODY_STATUS
        if not no_body:
            # RFC 9110 §8.6: none on 204, and a 304's would describe the stored body.
            # A HEAD answer states the length the GET body would have (§9.3.2).
            headers.append(b"content-length: %d\r\n" % len(body))
        self.response_headers = headers
        if not self.body_done:
            # The request body is unread; closing is the only safe way on.
            self.keep_alive = False
        route = self.route
        if route is not None and route.chain.response_hooks:
            for hook in route.chain.response_hooks:
                hook(self)
            if self.body_filters is not None and body and not no_body:
                body = filtered(self.body_filters, body) + filters_finished(self.body_filters)
                self.response_headers = without(self.response_headers, {b"content-length"})
                self.response_headers.append(b"content-length: %d\r\n" % len(body))
        self.response_headers.append(self.worker.date_line)
        if no_body or self.method == b"HEAD":
            body = b""
        self.mode = NONE   # the body, if any, goes with the head
        if self.tracer is not None:
            self.tracer.responding(self)
        self.response = HEAD_SENT
        codec = self.codec
        codec.write_answer(self, body)   # one write: head and body
        self.bytes_sent = len(body)
        self.response = COMPLETE
        self.finish()

    def abort_upstream(self) -> None:
        """Drop the upstream side (forwarding overrides this; the relay alone has none)."""


def filtered(filters, chunk: bytes) -> bytes:
    """`chunk` through each body filter in turn (b"" once one holds it back)."""
    for f in filters:
        chunk = f.feed(chunk)
        if not chunk:
            return b""
    return chunk


def filters_finished(filters) -> bytes:
    """The body filters' last bytes: what each holds back, through the filters after it."""
    out = b""
    for f in filters:
        if out:
            out = f.feed(out)
        out += f.finish()
    return out


def substitute(observers, exchange, reply):
    """An observer's stored response instead of a failure `reply` (stale_if_error), or `reply`."""
    now = time.time()
    for observer in observers:
        stored = observer.substitute(exchange, now)
        if stored is not None:
            return stored
    return reply
