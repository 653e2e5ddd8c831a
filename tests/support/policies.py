"""Policies with bugs in them, for the tests that prove a bug is a logged 500."""
from tollhouse.pipeline import Policy


class RaisesOnRequest(Policy):
    """A synchronous hook with a bug: it runs inside the parser's callback."""

    def on_request(self, exchange):
        return None + 1   # noqa - the bug under test
