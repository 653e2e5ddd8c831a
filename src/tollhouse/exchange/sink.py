"""What an upstream connection feeds: the small interface upstream/pool.py depends on.

The pool and its connections know an exchange only through these methods (and
its `worker`, whose outbox their writes join), never the request's layers.
"""
from __future__ import annotations


class ResponseSink:
    """The receiving end of an upstream connection (an exchange, in practice)."""

    __slots__ = ("worker",)

    def upstream_head(self, conn, status: int, headers: list, keep_alive: bool) -> None:
        """The upstream's response head (hop-by-hop and framing headers removed)."""
        raise NotImplementedError

    def upstream_body(self, chunk: bytes) -> None:
        """A piece of the upstream's response body."""
        raise NotImplementedError

    def upstream_trailers(self, lines: list, relayed: bool = True) -> None:
        """The upstream's trailer fields (HTTP/2), as header lines, before upstream_done
        (`relayed` False: a trailers-only head's fields, which the head carries)."""
        raise NotImplementedError

    def upstream_done(self, conn) -> None:
        """The upstream's response is complete; `conn` may go back to its pool."""
        raise NotImplementedError

    def upstream_closed(self, conn, exc) -> None:
        """The upstream connection ended while this sink was using it."""
        raise NotImplementedError

    def upstream_failed(self, kind: str, detail: str) -> None:
        """The upstream sent something that cannot be relayed."""
        raise NotImplementedError

    def upstream_writable(self, writable: bool) -> None:
        """The upstream connection's write buffer filled up (False) or drained (True): read
        no more from the sink's own source meanwhile."""
        raise NotImplementedError

    def accept_connection(self, target, conn) -> bool:
        """A waiter (`TargetPool.wait`) is handed a released connection; False = gone."""
        raise NotImplementedError

    def accept_slot(self, target) -> bool:
        """A waiter may open a connection (its slot reserved); False = gone."""
        raise NotImplementedError
