"""Policies with bugs in them, for the tests that prove a bug is a logged 500."""
from tollhouse.pipeline import Policy, Tracer


class RaisesOnRequest(Policy):
    """A synchronous hook with a bug: it runs inside the parser's callback."""

    def on_request(self, exchange):
        return None + 1   # noqa - the bug under test


class RecordingTracer(Tracer):
    """Records the hooks a request's work calls, for the tests of the core's tracing hooks."""

    def __init__(self):
        self.events = []

    def policy_started(self, exchange, policy):
        self.events.append(("policy_started", type(policy).__name__))

    def policy_ended(self, exchange, policy, result):
        self.events.append(("policy_ended", type(policy).__name__, getattr(result, "status", result)))

    def attempt_started(self, exchange, target, attempt):
        self.events.append(("attempt_started", target.url, attempt))

    def attempt_ended(self, exchange, target, status, failure):
        self.events.append(("attempt_ended", target.url, status, failure))

    def finished(self, exchange):
        self.events.append(("finished", exchange.status))


class _Shout:
    """An asyncio protocol that answers every piece of data in upper case."""

    def __init__(self, exchange):
        self.exchange = exchange

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.exchange.finish()   # the session is over: the exchange is counted and logged now


class UpgradeToShout(Policy):
    """Upgrades a request that asks for it (`Upgrade: shout`) and hands the connection
    over to _Shout: the test of the core's take-over after an upgrade."""

    def on_request(self, exchange):
        if not exchange.upgrade:
            return None
        exchange.status = 101
        exchange.response_headers = [b"upgrade: shout\r\n", b"connection: upgrade\r\n"]
        exchange.write_head()
        exchange.take_over(_Shout(exchange))
        return None


class CountsItsOutcome(Policy):
    """Remembers an outcome label per request: counted like the built-ins' outcomes."""

    outcome = "audit"
    outcome_metric = "audit_results"

    def on_request(self, exchange):
        exchange.remember(self.slot, "flagged" if exchange.header("x-flag") else "clean")
        return None

    def on_response(self, exchange):
        exchange.set_response_header("X-Audit-Outcome", exchange.outcome("audit"))
