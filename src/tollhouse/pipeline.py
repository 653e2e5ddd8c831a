"""The per-route policy chain and the interface every policy implements.

A route's chain is built once per config version. Request hooks run in
phase order (the registry's, `registry.phases()`); each either continues (returns None), answers locally
(returns a `Reply`), or needs to wait (returns an awaitable that resolves to
None or a Reply). Only the last case costs a task, so a chain of synchronous
policies keeps the proxy's hot path callback-driven. Response hooks run in
reverse order, synchronously, before the response head is written.

See docs/policies.md for the plugin-author guide.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import inspect
from typing import Any, Awaitable, Callable

import orjson

from .clock import CLOCK
from .registry import phases

# request.WAITING (no response begun), not imported: compiled, request's module imports this
# one while it initialises (tests/unit/test_compiled.py checks the two agree).
_WAITING = 0

log = logging.getLogger("tollhouse.pipeline")



class Reply:
    """A local answer from a policy: status, headers and body.

    `Reply.problem(...)` builds an RFC 9457 problem+json answer; the body's
    "request_id" field is filled in with the exchange's id when it is sent
    (`render_body`).
    """

    __slots__ = ("status", "headers", "body", "problem_fields", "lines")

    def __init__(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                 content_type: str | None = None):
        self.status = status
        self.body = body
        self.headers = list(headers or ())
        self.lines: list[bytes] | None = None   # ready-to-send header lines sent before `headers` (e.g. a cached head)
        if content_type:
            self.headers.append(("content-type", content_type))
        self.problem_fields = None

    @classmethod
    def problem(cls, status: int, title: str, detail: str = "", headers: list[tuple[str, str]] | None = None,
                type_: str = "about:blank", **members) -> "Reply":
        """An RFC 9457 problem+json answer; `members` are extension members."""
        reply = cls(status, headers=headers)
        reply.problem_fields = {"type": type_, "title": title, "status": status, "detail": detail, **members}
        return reply

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> "Reply":
        return cls(status, orjson.dumps(payload), headers, "application/json")

    def render_body(self, request_id: str) -> tuple[bytes, str | None]:
        """(body, content type to add) — problem bodies carry the request id."""
        if self.problem_fields is None:
            return self.body, None
        return orjson.dumps({**self.problem_fields, "request_id": request_id}), "application/problem+json"


class Tracer:
    """Hooks around one request's work, for tracing and the debug header: a worker's
    `tracer_factory(exchange)` returns one (or None) as each request starts. Every
    method is optional to override; the defaults do nothing. Without a tracer the
    request path checks one field and calls nothing."""

    def policy_started(self, exchange, policy) -> None:
        """Before `policy.on_request`."""

    def policy_ended(self, exchange, policy, result) -> None:
        """After it: `result` None (go on), a Reply (answered), or an exception (a bug);
        `Tracer.decision(result)` names it."""

    def attempt_started(self, exchange, target, attempt: int) -> None:
        """An upstream attempt is sent (`attempt` counts from 1; retries are 2, 3...)."""

    def attempt_ended(self, exchange, target, status: int, failure: str | None) -> None:
        """The attempt got a response head (`status`) or failed (`failure`: connect_error,
        reset, timeout, invalid; `status` is then what the gateway would answer)."""

    def responding(self, exchange) -> None:
        """The response head is about to be written: `exchange.response_headers` may still change."""

    def finished(self, exchange) -> None:
        """The exchange is over (its status, outcomes and timings are final)."""

    def subrequest(self, name: str) -> "Tracer | None":
        """The tracer of a subrequest made for this request (an aggregation backend
        named `name`), or None to leave it untraced."""
        return None

    def step(self, name: str, attributes: dict | None = None) -> "Tracer | None":
        """A part of this request's work with a span of its own (a GraphQL plan step),
        or None: the subrequests made for it are traced under it (its `subrequest`),
        and its `end()` closes it."""
        return None

    @staticmethod
    def decision(result) -> str:
        """A policy's result as a label: "pass", the status it answered with, or "error"."""
        if result is None:
            return "pass"
        if isinstance(result, Reply):
            return str(result.status)
        return "error"


class Deferred:
    """A decision that arrives later, delivered by a direct call (no task, no
    scheduled callback): for policies whose answers come in batches.

    The policy returns it from `on_request`; whoever decides later calls
    `resolve(None | Reply)` once, or `fail(exception)`.
    """

    __slots__ = ("chain", "exchange", "start", "proceed", "answer")

    def __init__(self):
        self.chain = None

    def resolve(self, value) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            chain._after(self.exchange, value, None, self.start, self.proceed, self.answer)

    def fail(self, error: BaseException) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            chain._after(self.exchange, None, error, self.start, self.proceed, self.answer)


class _BodyDone:
    """The body waiter of `with_body` (an object: the compiled build allows no closure)."""

    __slots__ = ("deferred", "then")

    def __init__(self, deferred, then):
        self.deferred, self.then = deferred, then

    def __call__(self):
        self.deferred.resolve(self.then())


def with_body(exchange, then):
    """For a policy that needs the whole request body: `then()`'s answer (None or a
    Reply), at once when the body is in, else a Deferred resolved when it is (reading
    goes on meanwhile; a body that stops arriving gets 408)."""
    if exchange.body_done:
        return then()
    deferred = Deferred()
    exchange.body_progress = CLOCK.now
    exchange.body_waiter = _BodyDone(deferred, then)
    return deferred


class Policy:
    """Base class of built-in and custom policies.

    Subclasses set `phase` (one of `registry.phases()`; custom policies default to
    "access", which runs after rate limiting and before caching), may set
    `Config` to a `tollhouse.config.schema.Schema` subclass that validates
    their options, and implement `on_request` and/or `on_response`.

    One instance serves one route for one config version: keep per-request
    state on the exchange, in this policy's slot (`exchange.remember(self.slot,
    value)`, `exchange.recall(self.slot)`) or in `exchange.vars`.

    A policy with an outcome worth counting (a decision, a cache result) sets
    `outcome` (its name in logs and traces: "cache"), `outcome_metric` (the
    counter family: "cache_results") and, if what it remembers is more than
    the label, `outcome_of(value)`. Metrics, the access log and traces read
    outcomes that way, from every policy alike.
    """

    __slots__ = ("config", "context", "slot")

    phase = "access"
    Config = None
    outcome = None
    outcome_metric = None
    #: Access log fields this policy fills per request (its kind declares them too:
    #: registry.PolicyKind.log_fields), from what it remembered: `log_values(value)`.
    log_fields: tuple = ()
    #: True for a policy that answers its route itself instead of an upstream
    #: (aggregation): once the other policies pass, `respond` is called.
    terminal = False
    #: The methods a terminal policy's route takes when its `match` names none.
    default_methods: tuple = ()

    def __init__(self, config: Any, context: "PolicyContext"):
        self.config = config
        self.context = context
        self.slot = -1   # its index in the route's chain: where it keeps per-request state

    def outcome_of(self, value) -> str | None:
        """The outcome label of what this policy remembered on an exchange."""
        return value if value.__class__ is str else None

    def log_values(self, value) -> tuple:
        """The values of `log_fields` (JSON-able) from what this policy remembered."""
        return ()

    def on_request(self, exchange) -> None | Reply | Awaitable[None | Reply]:
        """Called before proxying. Return None to continue, a Reply to answer
        locally, or an awaitable (e.g. a coroutine) resolving to either."""
        return None

    def on_response(self, exchange) -> None:
        """Called before the response head is written, in reverse phase order.
        `exchange.status` and `exchange.response_headers` may be changed."""
        return None

    def respond(self, exchange, body: bytes) -> None | Reply | Awaitable[None | Reply]:
        """A terminal policy's answer, with the whole request body: a Reply, an awaitable
        of one, or None when it answers itself, now or later
        (`exchange.respond(status, header lines, body)`, or `exchange.answer(reply)`)."""
        raise NotImplementedError


class PolicyContext:
    """What a policy may use beyond its own config: the store, the worker's metrics, its
    route's name and config (None for the gateway's own endpoints)."""

    __slots__ = ("store", "stats", "route_name", "route")

    def __init__(self, store, stats, route_name: str, route=None):
        self.store = store
        self.stats = stats
        self.route_name = route_name
        self.route = route


def _overrides(policy: Policy, method: str) -> bool:
    return getattr(type(policy), method) is not getattr(Policy, method)


class Chain:
    """A route's policies in phase order; `run` drives one exchange through them."""

    __slots__ = ("request_hooks", "response_hooks", "policies", "observed", "requesters", "outcome_names",
                 "outcome_metrics", "logged")

    def __init__(self, policies: list[Policy]):
        if policies:
            order = phases()
            ordered = sorted(policies, key=lambda p: order.index(p.phase))
        else:
            ordered = []
        self.policies = ordered
        for slot, policy in enumerate(ordered):
            policy.slot = slot
        self.observed = tuple(p for p in ordered if p.outcome is not None)   # policies with outcomes
        self.outcome_names = tuple(p.outcome for p in self.observed)
        self.outcome_metrics = tuple(p.outcome_metric for p in self.observed)
        self.logged = tuple(p for p in ordered if p.log_fields)   # policies with access log fields of their own
        self.requesters = tuple(p for p in ordered if _overrides(p, "on_request"))   # request_hooks' policies
        self.request_hooks = tuple(p.on_request for p in ordered if _overrides(p, "on_request"))
        self.response_hooks = tuple(p.on_response for p in reversed(ordered) if _overrides(p, "on_response"))

    def run(self, exchange, proceed: Callable[[], None], answer: Callable[[Reply], None], start: int = 0) -> None:
        """Run the request hooks; then `proceed()` or `answer(reply)`."""
        hooks = self.request_hooks
        tracer = exchange.tracer
        for i in range(start, len(hooks)):
            if tracer is not None:
                tracer.policy_started(exchange, self.requesters[i])
            result = hooks[i](exchange)
            if result is not None:
                self.handle(exchange, result, i, proceed, answer)
                return
            if tracer is not None:
                tracer.policy_ended(exchange, self.requesters[i], None)
        proceed()

    def handle(self, exchange, result, i: int, proceed, answer) -> None:
        """Hook `i` returned something other than None: answer, or wait for it."""
        if isinstance(result, Reply):
            if exchange.tracer is not None:
                exchange.tracer.policy_ended(exchange, self.requesters[i], result)
            answer(result)
        elif result.__class__ is Deferred:
            # Decided later by a direct call (e.g. a batched store call): no task.
            deferred = result
            deferred.chain, deferred.exchange, deferred.start = self, exchange, i + 1
            deferred.proceed, deferred.answer = proceed, answer
        else:
            exchange.task = asyncio.get_running_loop().create_task(
                self._resume(exchange, result, i + 1, proceed, answer))

    def _after(self, exchange, result, error, start, proceed, answer):
        if exchange.tracer is not None:
            exchange.tracer.policy_ended(exchange, self.requesters[start - 1], error or result)
        if exchange.finished or exchange.response != _WAITING:
            return   # over, or answered by the policy itself (a WebSocket taken over)
        if error is not None:
            log.error("policy failed", exc_info=error)
            answer(Reply.problem(500, "Internal Server Error", "a policy failed on this request"))
            return
        if isinstance(result, Reply):
            answer(result)
        else:
            self.run(exchange, proceed, answer, start)

    async def _resume(self, exchange, pending, start, proceed, answer):
        """A hook's awaitable: once it is decided, the chain goes on as `run` does, so a
        later hook may again answer at once, wait in a Deferred or await."""
        try:
            result = await pending
        except Exception as e:  # noqa: BLE001 - a policy's failure is a 500 for its request alone
            exchange.task = None
            self._after(exchange, None, e, start, proceed, answer)
            return
        exchange.task = None
        self._after(exchange, result, None, start, proceed, answer)

    def logged_values(self, slots) -> dict:
        """Access log field -> value, of the policies that fill fields of their own (`logged`)."""
        values = {}
        if slots is not None:
            for policy in self.logged:
                value = slots[policy.slot]
                if value is not None:
                    values.update(zip(policy.log_fields, policy.log_values(value)))
        return values

    def named_outcomes(self, slots) -> dict:
        """Outcome name -> label of the policies that noted one in an exchange's `slots`."""
        return {name: label for name, label in zip(self.outcome_names, self.labels(slots)) if label is not None}

    def labels(self, slots) -> tuple:
        """The outcome labels of an exchange's remembered `slots`, aligned with `observed`
        and `outcome_names` (None where a policy noted nothing)."""
        observed = self.observed
        if slots is None or not observed:
            return ()
        if len(observed) == 1:   # the common case: no list on the way
            policy = observed[0]
            value = slots[policy.slot]
            return (policy.outcome_of(value) if value is not None else None,)
        labels = []
        for policy in observed:
            value = slots[policy.slot]
            labels.append(policy.outcome_of(value) if value is not None else None)
        return tuple(labels)


EMPTY_CHAIN = Chain([])


def load_object(spec: str):
    """Import `module:name` and return the name's object (None when the module has none);
    ValueError with a readable reason when the module cannot be imported."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is a config error
        raise ValueError(f"cannot import {module_name}: {e}") from None
    return getattr(module, name, None)


def load_policy_class(spec: str) -> type:
    """Import `module:Class`; ValueError with a readable reason otherwise."""
    module_name, _, class_name = spec.partition(":")
    cls = load_object(spec)
    if not inspect.isclass(cls):
        raise ValueError(f"{module_name} has no class {class_name}")
    if not issubclass(cls, Policy):
        raise ValueError(f"{spec} is not a tollhouse.pipeline.Policy subclass")
    if cls.phase not in phases():
        raise ValueError(f"{spec}.phase must be one of {', '.join(phases())}, got {cls.phase!r}")
    return cls
