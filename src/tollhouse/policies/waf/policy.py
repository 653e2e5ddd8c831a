"""The WAF's handler: one ModSecurity transaction per request (docs/waf.md).

The engine sees what the upstream would get after the gateway's own
normalisation: the normalised path and the query as sent, the method, the
headers as relayed (Host, Content-Length, Content-Type and the rest), and the
whole body before any of it is forwarded. The body is streamed into the engine
piece by piece as it arrives (a body reader), and the request waits for the
verdict (a Deferred resolved when the body is complete), so a blocked request
never reaches the upstream.
"""
from __future__ import annotations

from ...pipeline import Policy, Reply, with_body

BLOCKED, DETECTED, PASSED, UNINSPECTED = "blocked", "detected", "passed", "uninspected"
#: CRS severities to their anomaly points (crs-setup.conf's defaults): the score of what matched.
_POINTS = {2: 5, 3: 4, 4: 3, 5: 2}
#: The CRS's own evaluation rules, which report a score rather than an attack.
_EVALUATION = frozenset((949110, 959100, 980130, 980140))


class WafPolicy(Policy):
    """One per route: its engine (shared by every route with the same settings)."""

    __slots__ = ("engine", "block", "body_limit", "reject_large", "counters", "route_name", "outcome_keys")

    phase = "inspect"
    outcome = "waf"
    log_fields = ("waf_rules", "waf_score")

    def __init__(self, config, context, engine):
        super().__init__(config, context)
        self.engine = engine
        self.block = config.mode == "block"
        self.body_limit = config.body_limit
        self.reject_large = config.on_body_limit == "reject"
        self.counters = context.stats.counters
        self.route_name = context.route_name
        self.outcome_keys = {o: ("waf_requests", (("route", context.route_name), ("outcome", o)))
                             for o in (BLOCKED, DETECTED, PASSED, UNINSPECTED)}
        for key in self.outcome_keys.values():
            context.stats.declare(*key)

    def on_request(self, exchange):
        tx = self.engine.transaction(exchange.request_id.decode("latin-1"))
        peer = exchange.conn.peer_ip
        tx.process_connection(exchange.client_ip, 0, peer, 0)
        target = (exchange.path + exchange.query).decode("latin-1")
        tx.process_uri(target, exchange.method.decode("latin-1"), "2.0" if exchange.version == "2" else "1.1")
        tx.add_request_header("Host", exchange.host.decode("latin-1"))
        if exchange.content_length is not None:
            tx.add_request_header("Content-Length", str(exchange.content_length))
        elif exchange.chunked:
            tx.add_request_header("Transfer-Encoding", "chunked")
        for line in exchange.headers:
            name, _, value = line.decode("latin-1").partition(":")
            tx.add_request_header(name.strip(), value.strip())
        tx.process_request_headers()
        verdict = self.verdict(exchange, tx, final=False)
        if verdict is not None:
            return verdict
        length = exchange.content_length
        if not exchange.chunked and not length:
            return self.finish(exchange, tx, None)
        limit = self.body_limit
        if limit and length is not None and length > limit:
            if self.reject_large:
                return self.too_large(exchange)
            return self.finish(exchange, tx, UNINSPECTED)   # on_body_limit: pass, uninspected
        if limit:
            exchange.body_limit = limit if not exchange.body_limit or limit < exchange.body_limit else exchange.body_limit
        # The body read so far goes in now, the rest piece by piece as it arrives.
        exchange.add_body_reader(_BodyFeed(tx))
        return with_body(exchange, lambda: self.finish(exchange, tx, None))

    def finish(self, exchange, tx, outcome):
        tx.process_request_body()   # phase 2, where the CRS adds up the score and decides
        return self.verdict(exchange, tx, final=True, outcome=outcome)

    def verdict(self, exchange, tx, final: bool, outcome=None):
        """The Reply that blocks, or None; counted and remembered once the engine has decided."""
        intervention = tx.intervention()
        disruptive = intervention is not None and intervention.disruptive
        if not disruptive and not final:
            return None
        messages = tx.get_rule_messages()
        rules = sorted({m.rule_id for m in messages})
        score = sum(_POINTS.get(m.severity, 0) for m in messages if m.rule_id not in _EVALUATION)
        tx.process_logging()
        if disruptive:
            outcome = BLOCKED if self.block else DETECTED
        elif outcome is None:
            outcome = PASSED
        exchange.remember(self.slot, (outcome, rules, score))
        counters = self.counters
        key = self.outcome_keys[outcome]
        counters[key] = counters.get(key, 0) + 1
        for rule in rules:
            hit = ("waf_rule_hits", (("rule", str(rule)),))
            counters[hit] = counters.get(hit, 0) + 1
        if outcome == BLOCKED:
            status = intervention.status if intervention.status >= 400 else 403
            return Reply.problem(status, "Forbidden", "the request was refused by the web application firewall",
                                 rules=rules, score=score)
        return None

    def too_large(self, exchange):
        key = self.outcome_keys[BLOCKED]
        self.counters[key] = self.counters.get(key, 0) + 1
        exchange.remember(self.slot, (BLOCKED, [], 0))
        return Reply.problem(413, "Content Too Large", f"the body exceeds the {self.body_limit} bytes the firewall inspects")

    def outcome_of(self, value):
        return value[0] if value is not None else None

    def log_values(self, value) -> tuple:
        return value[1], value[2]   # the matched rule ids, the anomaly score


class _BodyFeed:
    """Streams the request body into the transaction as it arrives (exchange.add_body_reader):
    the engine copies each piece, so judging the whole body costs no join of it here."""

    __slots__ = ("tx",)

    def __init__(self, tx):
        self.tx = tx

    def feed(self, exchange, chunk: bytes):
        self.tx.append_request_body(chunk)
        return None

    def end(self, exchange):
        return None   # the verdict waits for phase 2 (the body waiter), after every reader
