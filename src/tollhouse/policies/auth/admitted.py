"""The auth policy's common cases, compiled (admitted.pxd): a bearer token this
route admitted before is one dictionary lookup away, with no hashing, decoding,
signature or scope check; so is a browser session (its Cookie header) while its
cache entry holds and nothing about it is due. `AuthPolicy` (policies/auth/policy.py, plain Python)
derives from `AdmittedTokens` and does the rest in `check`; interpreted, the
shortcut itself cost more than the lookup it makes.
"""
from __future__ import annotations

from time import time

from ...pipeline import Policy


class AdmittedTokens(Policy):
    """`on_request` in C for tokens in `admitted` (Authorization value -> (identity, until));
    anything else goes to `check`."""

    __slots__ = ("admitted", "bearer", "authorization", "sessions", "cookie")

    def on_request(self, exchange):
        noted = exchange.noted
        auth = noted[self.authorization] if noted is not None else None
        if auth is not None and self.bearer:
            admitted = self.admitted.get(auth)
            if admitted is not None and admitted[1] > time():
                identify(exchange, admitted[0])
                return None
        if self.sessions is not None and noted is not None:
            cookie = noted[self.cookie]
            if cookie is not None:
                # (what the session's entry made, the entry): the entry is the directory's, marked
                # dead (until 0) when the session changes; what it made holds until its own time.
                hit = self.sessions.get(cookie)
                if hit is not None:
                    entry = hit[1]
                    made = hit[0]
                    now = time()
                    if entry[1] > now and entry[2] is made and made[1] > now:
                        identify(exchange, made[0])
                        return None
        return self.check(exchange)

    def check(self, exchange):
        """Everything but the shortcut: verifying, caching, admitting or denying."""
        raise NotImplementedError


def identify(exchange, identity) -> None:
    """The caller is known: to the policies after this one and (as headers) to the upstream."""
    exchange.identity = identity
    exchange.headers += identity.upstream_lines
