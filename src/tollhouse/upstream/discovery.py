"""Targets from DNS (docs/upstreams.md, "Targets from DNS").

An upstream target may be `{dns: host:port}` (every address of the name's A and AAAA
records is a target) or `{srv: _service._proto.name}` (the hosts and ports of the SRV
records of the lowest priority, weighted by their weight). `DnsTargets` looks them up
on the upstream's pool, again on the records' TTL and at least every `dns_refresh`,
with dnspython's resolver (the system's, or `dns_resolver`):

- a changed answer changes the pool's targets without a reload: targets that remain
  keep their pools (warm connections), new ones are added, and removed ones take no
  new requests and close their idle connections, while the requests they carry finish;
- a lookup that fails (no answer, NXDOMAIN, SERVFAIL, a timeout) keeps the last good
  answer, is counted in `tollhouse_dns_failures_total{upstream}` and is tried again
  within a few seconds.
"""
from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.resolver

from .balancer import make_balancer
from .locality import Localities, place

log = logging.getLogger("tollhouse.upstream")

RETRY = 2.0   # seconds before a failed lookup is tried again


class DnsTargets:
    __slots__ = ("pool", "settings", "loop", "make", "codec", "sources", "static", "found", "failures", "task",
                 "resolver", "origins")

    def __init__(self, pool, settings, loop, make, codec):
        self.pool = pool
        self.settings = settings
        self.loop = loop
        self.make = make
        self.codec = codec
        self.sources = [t for t in settings.targets if t.dns or t.srv]
        self.static = list(pool.targets)   # the targets given as URLs
        self.found: dict[str, int] = {}    # url -> weight, the last good answer
        self.origins: dict = {}            # url -> the `targets` entry that named it (its region and zone)
        self.failures = 0
        self.resolver = dns.asyncresolver.Resolver(configure=not settings.dns_resolver)
        if settings.dns_resolver:
            host, _, port = settings.dns_resolver.rpartition(":")
            self.resolver.nameservers = [host.strip("[]")]
            self.resolver.port = int(port)
        self.resolver.lifetime = 2.0
        self.task = loop.create_task(self._follow())

    def close(self) -> None:
        self.task.cancel()

    async def _follow(self) -> None:
        while True:
            try:
                found, ttl = await self.lookup()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the last good answer stays
                self.failures += 1
                log.warning("upstream %s: DNS lookup failed (%s); keeping %d targets", self.pool.name,
                            type(e).__name__, len(self.pool.targets))
                await asyncio.sleep(RETRY)
                continue
            if found != self.found:
                self.apply(found)
            await asyncio.sleep(max(1.0, min(ttl, self.settings.dns_refresh)))

    async def lookup(self) -> tuple[dict, float]:
        """The targets every source names now (url -> weight), and the shortest TTL seen."""
        found: dict[str, int] = {}
        ttl = self.settings.dns_refresh
        for source in self.sources:
            if source.dns:
                host, _, port = source.dns.rpartition(":")
                addresses, seen = await self._addresses(host)
                ttl = min(ttl, seen)
                for address in addresses:
                    url = _url(source.scheme, address, int(port))
                    found[url] = source.weight
                    self.origins[url] = source
                continue
            answer = await self.resolver.resolve(source.srv, "SRV")
            ttl = min(ttl, answer.rrset.ttl)
            records = list(answer)
            lowest = min(r.priority for r in records)
            for r in records:
                if r.priority != lowest:
                    continue
                addresses, seen = await self._addresses(str(r.target).rstrip("."))
                ttl = min(ttl, seen)
                for address in addresses:
                    url = _url(source.scheme, address, r.port)
                    found[url] = max(1, r.weight)
                    self.origins[url] = source
        if not found:
            raise dns.resolver.NoAnswer()
        return found, ttl

    async def _addresses(self, host: str) -> tuple[list[str], float]:
        addresses, ttl = [], self.settings.dns_refresh
        for kind in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, kind)
            except dns.resolver.NoAnswer:
                continue
            ttl = min(ttl, answer.rrset.ttl)
            addresses += [r.address for r in answer]
        if not addresses:
            raise dns.resolver.NoAnswer()
        return sorted(addresses), ttl

    def apply(self, found: dict) -> None:
        pool = self.pool
        current = {t.url: t for t in pool.targets}
        kept = {t.url for t in self.static}
        targets = list(self.static)
        for url, weight in found.items():
            target = current.get(url)
            if target is None:
                target = self.make(url, weight, self.settings, self.loop, self.codec)
            target.weight = weight
            place(target, self.origins.get(url))
            targets.append(target)
        removed = [t for url, t in current.items() if url not in found and url not in kept]
        pool.targets = targets
        pool.balancer = make_balancer(self.settings.balancer, targets, self.settings.hash_key)
        if pool.localities is not None:
            # The levels again, with the new targets in their entry's region and zone.
            pool.localities = Localities(self.settings.locality, targets, self.settings)
        pool.single = targets[0] if len(targets) == 1 and pool.localities is None else None
        for target in removed:
            target.close()   # idle connections go; the requests it carries finish on theirs
        log.info("upstream %s: DNS gives %d targets (%d added, %d removed)", pool.name, len(found),
                 len(set(found) - set(self.found)), len(removed))
        self.found = dict(found)


def _url(scheme: str, address: str, port: int) -> str:
    return f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"
