"""The probe contract: what a probe is given (a Target and its Resolved address) and the Check signature
it answers with an Outcome; also how a failed name lookup is reported (ResolveFailure)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.probes.outcome import Outcome, State


@dataclass(frozen=True, slots=True)
class Resolved:
    family: int
    host: str  # the numeric address


@dataclass(frozen=True, slots=True)
class ResolveFailure:
    state: State
    evidence: str


def literal(address: str) -> Resolved | None:
    """A numeric IPv4/IPv6 address as a Resolved, or None for a name."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    return Resolved(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))


@dataclass(frozen=True, slots=True)
class Target:
    """What the engine needs of a NetworkPath: where to connect and which check proves it."""

    host: str  # address or name to connect to
    port: int
    check: str = "tcp"
    name: str = ""  # the target's FQDN (for SNI, Host headers, realms, expected names in replies)
    family: str = ""  # "ipv4" | "ipv6": resolve `host` within this family only ("" any)
    local: str = ""  # the local address to probe from (--probe.source-address; "" the OS chooses)


#: a protocol check: (resolved address, target, per-attempt timeout, attempts) -> Outcome
Check = Callable[[Resolved, Target, float, int], Awaitable[Outcome]]
