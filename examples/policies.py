"""Worked example of custom policies (docs/policies.md); tests/integration/test_policies.py runs it."""
from tollhouse.config.schema import Field, Int, ListOf, Schema, Str
from tollhouse.pipeline import Policy, Reply


class AuditPolicy(Policy):
    """Stamps every request with an audit tag and refuses requests without a reason header.

    Synchronous: it never awaits, so it costs no task on the request path.
    """

    phase = "access"

    class Config(Schema):
        tag = Field(Str(), "audited", "value of X-Audit sent upstream")
        require = Field(ListOf(Str()), (), "request headers that must be present")

    def on_request(self, exchange):
        for name in self.config.require:
            if exchange.header(name) is None:
                return Reply.problem(400, "Bad Request", f"the {name} header is required")
        exchange.set_header("X-Audit", self.config.tag)
        exchange.vars = {"audit": self.config.tag}
        return None

    def on_response(self, exchange):
        exchange.set_response_header("X-Audited", self.config.tag)


class VisitCounter(Policy):
    """Counts visits per client in the store and answers 429 after `limit`.

    Asynchronous: `on_request` returns a coroutine, so the pipeline awaits it.
    (The real rate limiter is a built-in; this only shows the interface.)
    """

    class Config(Schema):
        limit = Field(Int(min=1), 3, "visits allowed per client")

    async def on_request(self, exchange):
        key = f"visits:{exchange.client_ip}"
        seen = int(await self.context.store.get(key) or 0) + 1
        await self.context.store.set(key, str(seen).encode(), ttl=60)
        if seen > self.config.limit:
            return Reply.problem(429, "Too Many Requests", "visit limit reached", headers=[("retry-after", "60")])
        return None
