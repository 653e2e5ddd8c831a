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


class RedactBody:
    """A response body filter: every `secret` becomes `******`, as the body streams (a word
    cut across two chunks is found too: the filter keeps back a possible beginning)."""

    def __init__(self, word: bytes, mask: bytes):
        self.word = word
        self.mask = mask
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = (self.held + chunk).replace(self.word, self.mask)
        keep = len(self.word) - 1   # the longest tail that could still begin the word
        self.held, out = data[-keep:], data[:-keep]
        return out

    def finish(self) -> bytes:
        held, self.held = self.held, b""
        return held


class Redact(Policy):
    """Masks a word in response bodies. Added from `on_response`, its filter runs before
    compression on a route that has both (body filters run in phase order: this
    policy's phase, access, comes before compression's, transform), so it sees the
    plain body and the client gets it masked and compressed."""

    class Config(Schema):
        word = Field(Str(), "secret", "the word to mask")

    def on_response(self, exchange):
        word = self.config.word.encode()
        exchange.add_body_filter(RedactBody(word, b"*" * len(word)))


class RefuseBodyWith:
    """A request body reader: refuses (403) a body containing `word`, as it arrives."""

    def __init__(self, word: bytes):
        self.word = word
        self.tail = b""

    def feed(self, exchange, chunk: bytes):
        seen = self.tail + chunk
        if self.word in seen:
            return Reply.problem(403, "Forbidden", "the request body is refused")
        self.tail = seen[-(len(self.word) - 1):]
        return None

    def end(self, exchange):
        return None


class InspectBody(Policy):
    """Reads each request body on its route as it arrives (what a WAF does)."""

    class Config(Schema):
        word = Field(Str(), "attack", "a request body containing it is refused with 403")

    def on_request(self, exchange):
        return exchange.add_body_reader(RefuseBodyWith(self.config.word.encode()))


class BodySize(Policy):
    """A terminal policy: answers its route itself with the size of the whole request body
    (up to the route's body limit), instead of an upstream."""

    terminal = True
    default_methods = ("POST",)

    def respond(self, exchange, body: bytes):
        return Reply.json(200, {"bytes": len(body)})
