"""The auth policy's common case, compiled (admitted.pxd): a bearer token this
route admitted before is one dictionary lookup away, with no hashing, decoding,
signature or scope check. `AuthPolicy` (policies/auth/policy.py, plain Python)
derives from `AdmittedTokens` and does the rest in `check`; interpreted, the
shortcut itself cost more than the lookup it makes.
"""
from __future__ import annotations

from time import time

from ...pipeline import Policy


class AdmittedTokens(Policy):
    """`on_request` in C for tokens in `admitted` (Authorization value -> (identity, until));
    anything else goes to `check`."""

    __slots__ = ("admitted", "bearer", "authorization")

    def on_request(self, exchange):
        noted = exchange.noted
        auth = noted[self.authorization] if noted is not None else None
        if auth is not None and self.bearer:
            admitted = self.admitted.get(auth)
            if admitted is not None and admitted[1] > time():
                identify(exchange, admitted[0])
                return None
        return self.check(exchange)

    def check(self, exchange):
        """Everything but the shortcut: verifying, caching, admitting or denying."""
        raise NotImplementedError


def identify(exchange, identity) -> None:
    """The caller is known: to the policies after this one and (as headers) to the upstream."""
    exchange.identity = identity
    exchange.headers += identity.upstream_lines
