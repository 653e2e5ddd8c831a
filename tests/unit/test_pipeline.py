"""The chain of a route's policies, driven by hand on a stand-in exchange (no gateway)."""
import json

from tollhouse.pipeline import Chain, Deferred, Policy, Reply


class _Connection:
    worker = None
    codec = None


def _Exchange():
    """A real exchange on a stand-in connection; the policies note their names in `vars`."""
    from tollhouse.exchange.lifecycle import Exchange

    ex = Exchange(_Connection(), None)
    ex.vars = []
    return ex


def _policy(phase, name, answer=None, deferred=None):
    class Recorder(Policy):
        def on_request(self, exchange):
            exchange.vars.append(name)
            return deferred if deferred is not None else answer

    Recorder.phase = phase
    return Recorder(None, None)


def _run(chain, exchange):
    outcome = []
    chain.run(exchange, lambda: outcome.append("proceed"), lambda reply: outcome.append(reply.status))
    return outcome


def test_policies_run_in_the_registrys_phase_order_and_get_their_slots():
    policies = [_policy("transform", "t"), _policy("ip", "i"), _policy("auth", "a"), _policy("access", "x")]
    chain = Chain(policies)
    ex = _Exchange()
    assert _run(chain, ex) == ["proceed"]
    assert ex.vars == ["i", "a", "x", "t"]
    assert [p.slot for p in chain.policies] == [0, 1, 2, 3]


def test_a_reply_stops_the_chain_and_is_the_answer():
    chain = Chain([_policy("auth", "a", answer=Reply(401)), _policy("transform", "t")])
    ex = _Exchange()
    assert _run(chain, ex) == [401]
    assert ex.vars == ["a"]


def test_a_deferred_decision_resumes_the_chain_where_it_stopped():
    deferred = Deferred()
    chain = Chain([_policy("ratelimit", "r", deferred=deferred), _policy("transform", "t")])
    ex = _Exchange()
    assert _run(chain, ex) == []          # waiting: nothing decided, no task
    assert ex.task is None and ex.vars == ["r"]
    outcome = []
    deferred.proceed, deferred.answer = (lambda: outcome.append("proceed")), (lambda r: outcome.append(r.status))
    deferred.resolve(None)
    assert ex.vars == ["r", "t"] and outcome == ["proceed"]


def test_response_hooks_run_in_reverse_phase_order():
    order = []

    class Early(Policy):
        phase = "auth"

        def on_response(self, exchange):
            order.append("auth")

    class Late(Policy):
        phase = "transform"

        def on_response(self, exchange):
            order.append("transform")

    chain = Chain([Early(None, None), Late(None, None)])
    for hook in chain.response_hooks:
        hook(None)
    assert order == ["transform", "auth"]
    assert chain.request_hooks == ()   # neither overrides on_request: nothing to call


def test_a_problem_reply_carries_the_request_id():
    body, content_type = Reply.problem(404, "Not Found", "no route", extra=1).render_body("rid-7")
    assert content_type == "application/problem+json"
    assert json.loads(body) == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no route",
                                "extra": 1, "request_id": "rid-7"}
