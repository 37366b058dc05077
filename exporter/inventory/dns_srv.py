"""Domain controllers from DNS: the AD DC locator's SRV records (MS-ADTS 6.3.6.1), used when no LDAP URL
is configured. `_ldap._tcp.<Site>._sites.dc._msdcs.<domain>` first when a site is given, then
`_ldap._tcp.dc._msdcs.<domain>`; the domain comes from the settings or the host's resolver search list.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver

from exporter.errors import ConfigError, DiscoveryError

log = logging.getLogger(__name__)

DC_SRV = "_ldap._tcp.dc._msdcs.{domain}"
SITE_DC_SRV = "_ldap._tcp.{site}._sites.dc._msdcs.{domain}"


@dataclass(frozen=True)
class LocatedDc:
    """One SRV answer: a DC's host and LDAP port, and its addresses when we resolved them ourselves."""

    host: str
    port: int
    priority: int
    weight: int
    in_site: bool  # from the site-specific record
    addresses: tuple[str, ...] = ()


def parse_nameserver(text: str) -> tuple[str, int]:
    """`10.0.0.53`, `10.0.0.53:5353`, `[fd00::53]:53`, `fd00::53` -> (address, port)."""
    value = text.strip()
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"--ldap.dns-server {text!r} is not an IP address[:port]",
            fix="e.g. 10.0.0.53 or 10.0.0.53:53 or [fd00::53]:53",
        ) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ldap.dns-server {text!r}: bad port", fix="e.g. 10.0.0.53:53")
    return host, int(port)


def _resolver(
    nameserver: tuple[str, int] | None, timeout: float, resolv_conf: str | None
) -> dns.resolver.Resolver:
    if nameserver is not None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    else:
        try:
            resolver = dns.resolver.Resolver(filename=resolv_conf or "/etc/resolv.conf")
        except dns.resolver.NoResolverConfiguration:
            raise DiscoveryError(
                "the host has no DNS resolver configuration to find domain controllers with",
                fix="give --ldap.url, or --ldap.dns-server",
            ) from None
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)
    return resolver


def search_domains(resolv_conf: str | None = None) -> list[str]:
    """The host's DNS search list (and its own domain), in order: candidates for the AD domain."""
    try:
        resolver = dns.resolver.Resolver(filename=resolv_conf or "/etc/resolv.conf")
    except dns.resolver.NoResolverConfiguration:
        return []
    names = [*resolver.search, resolver.domain]
    domains: list[str] = []
    for name in names:
        text = name.to_text(omit_final_dot=True).lower()
        if text and text not in (".", "") and text not in domains and name != dns.name.root:
            domains.append(text)
    return domains


def locate_dcs(
    domain: str | None = None,
    *,
    site: str | None = None,
    nameserver: tuple[str, int] | None = None,
    timeout: float = 5.0,
    resolv_conf: str | None = None,
) -> list[LocatedDc]:
    """The domain's DCs in the order to try them: the site's own first, each group by SRV priority and
    weight. With an explicit `nameserver`, their addresses are resolved there too (the host's resolver
    may not know the AD zone)."""
    resolver = _resolver(nameserver, timeout, resolv_conf)
    domains = [domain.strip().rstrip(".").lower()] if domain else search_domains(resolv_conf)
    if not domains:
        raise DiscoveryError(
            "no AD domain to look up: none configured and the resolver has no search list",
            fix="give --ldap.domain example.com, or --ldap.url",
        )
    server = f"{nameserver[0]}:{nameserver[1]}" if nameserver else "the host's resolver"
    tried: list[str] = []
    for name in domains:
        queries = [(SITE_DC_SRV.format(site=site, domain=name), True)] if site else []
        queries.append((DC_SRV.format(domain=name), False))
        found: list[LocatedDc] = []
        for query, in_site in queries:
            tried.append(query)
            for dc in _srv(resolver, query, in_site, server):
                if all(dc.host != f.host for f in found):
                    found.append(dc)
        if found:
            if nameserver is not None:
                found = [_with_addresses(resolver, dc, server) for dc in found]
            log.debug(
                "DNS SRV: %d DCs for %s from %s: %s",
                len(found),
                name,
                server,
                ", ".join(f"{d.host}:{d.port}" for d in found),
            )
            return found
    raise DiscoveryError(
        f"no domain controller in DNS: {server} has no SRV records for {', '.join(tried)}",
        fix="check --ldap.domain (the AD DNS domain) and --ldap.dns-server, or give --ldap.url",
    )


def _srv(resolver: dns.resolver.Resolver, query: str, in_site: bool, server: str) -> list[LocatedDc]:
    try:
        answer = resolver.resolve(query, "SRV")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.NoNameservers as exc:
        raise DiscoveryError(
            f"DNS {server} failed for {query}: {exc}", fix="check --ldap.dns-server"
        ) from None
    except dns.exception.Timeout:
        raise DiscoveryError(
            f"DNS {server} did not answer for {query}",
            fix="check --ldap.dns-server and the firewall (53/udp, 53/tcp)",
        ) from None
    except dns.exception.DNSException as exc:
        raise DiscoveryError(
            f"DNS lookup {query} at {server} failed: {exc}", fix="check --ldap.dns-server"
        ) from None
    records = []
    for rdata in answer:
        target = rdata.target.to_text(omit_final_dot=True).lower()
        if target and target != ".":
            records.append(
                LocatedDc(target, int(rdata.port), int(rdata.priority), int(rdata.weight), in_site)
            )
    # RFC 2782 picks by weight at random; a deterministic order (heaviest first) keeps retries predictable
    return sorted(records, key=lambda r: (r.priority, -r.weight, r.host))


def _with_addresses(resolver: dns.resolver.Resolver, dc: LocatedDc, server: str) -> LocatedDc:
    addresses: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            addresses += [r.to_text() for r in resolver.resolve(dc.host, rdtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            log.debug("DNS %s: %s %s failed: %s", server, dc.host, rdtype, type(exc).__name__)
    return LocatedDc(dc.host, dc.port, dc.priority, dc.weight, dc.in_site, tuple(addresses))


def ldap_urls(located: Sequence[LocatedDc], *, starttls: bool = False) -> list[str]:
    """URLs to try: LDAPS on 636 of each DC (the locator only publishes 389), or 389 for StartTLS."""
    return [f"ldap://{d.host}:{d.port}" if starttls else f"ldaps://{d.host}:636" for d in located]
