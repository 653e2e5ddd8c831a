"""IP allow/deny (docs/contract.md §2 route `ip` and top-level `ip`; §3: 403).

The address checked is the real client address (`exchange.client_ip`: the
peer, or the first untrusted X-Forwarded-For hop behind `trusted_proxies`).
Deny wins over allow; with an `allow` list, only listed addresses pass.

Lookups stay fast with thousands of entries: the networks are grouped by
prefix length into sets of masked integers, so a check is one set lookup per
distinct prefix length (a handful in practice) instead of one comparison per
network; verdicts are memoised per address (bounded).
"""
from __future__ import annotations

import ipaddress

from ..config.schema import Field, ListOf, Network, Schema, error_at
from ..pipeline import Policy, Reply
from ..registry import PolicyKind, Section


class IpRules(Schema):
    allow = Field(ListOf(Network()), (), "CIDRs allowed; when given, every other address is refused")
    deny = Field(ListOf(Network()), (), "CIDRs refused (deny wins over allow)")

    def check(self, path, lines, line, errors):
        if not self.allow and not self.deny:
            error_at(errors, path, "allow", lines, line, "give allow, deny or both")


class NetworkSet:
    """Membership of an address in many networks, by prefix length."""

    __slots__ = ("v4", "v6")

    def __init__(self, networks):
        self.v4: list[tuple[int, set[int]]] = []
        self.v6: list[tuple[int, set[int]]] = []
        groups: dict[tuple[int, int], set[int]] = {}
        for net in networks:
            net = ipaddress.ip_network(net, strict=False)
            groups.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        for (version, prefix), members in sorted(groups.items()):
            bits = 32 if version == 4 else 128
            mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
            (self.v4 if version == 4 else self.v6).append((mask, members))

    def __contains__(self, addr) -> bool:
        value = int(addr)
        for mask, members in (self.v4 if addr.version == 4 else self.v6):
            if value & mask in members:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


class IpFilter:
    """Compiled allow/deny lists with a bounded memo of verdicts."""

    __slots__ = ("allow", "deny", "memo")

    MEMO_SIZE = 65536

    def __init__(self, rules: IpRules):
        self.allow = NetworkSet(rules.allow)
        self.deny = NetworkSet(rules.deny)
        self.memo: dict[str, bool] = {}

    def permits(self, ip: str) -> bool:
        verdict = self.memo.get(ip)
        if verdict is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                verdict = not self.allow   # an unparseable address is in no list
            else:
                if addr.version == 6 and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped   # ::ffff:10.0.0.1 is 10.0.0.1
                verdict = addr not in self.deny and (not self.allow or addr in self.allow)
            if len(self.memo) >= self.MEMO_SIZE:
                self.memo.clear()
            self.memo[ip] = verdict
        return verdict


class IpPolicy(Policy):
    """One instance per route: the global rules (if any) then the route's."""

    phase = "ip"
    Config = IpRules

    def __init__(self, config, context, *, filters: list[IpFilter]):
        super().__init__(config, context)
        self.filters = filters
        self.count_key = ("ip_refusals", (("route", context.route_name),))
        self.counters = context.stats.counters
        context.stats.declare(*self.count_key)

    def on_request(self, exchange):
        ip = exchange.client_ip
        for f in self.filters:
            if not f.permits(ip):
                counters = self.counters
                counters[self.count_key] = counters.get(self.count_key, 0) + 1
                return Reply.problem(403, "Forbidden", "this client address is not allowed here")
        return None


def _build(config, context, services):
    # The global `ip` rules guard every route, and the gateway's own endpoints too.
    shared = services.once("ip", lambda: IpFilter(services.config.ip) if services.config.ip is not None else None)
    filters = [f for f in (shared, IpFilter(config) if config is not None else None) if f is not None]
    return IpPolicy(config, context, filters=filters) if filters else None


KIND = PolicyKind("ip", phase=IpPolicy.phase, key="ip", build=_build, field=Field(
    IpRules, None, "{allow, deny}: CIDR lists on the real client address, deny wins (403); checked after the global `ip`"),
    sections=(Section("ip", Field(IpRules, None, "{allow, deny} for every route (a route's own `ip` is checked "
                                                 "as well)")),))
