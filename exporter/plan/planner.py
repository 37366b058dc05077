"""The planner: (inventory, this agent's identity) -> the NetworkPaths this agent must probe."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.errors import ConfigError
from exporter.inventory.model import DomainController, Inventory, Member, Product, Role, Server
from exporter.plan.catalogue import (
    CATALOGUE,
    DC,
    EDGE_SENDERS,
    GC,
    REQUIRED_KINDS,
    WITNESS,
    PathKind,
    PortEntry,
)

DEFAULT_DAG_REPLICATION_PORT = 64327


class Vantage(enum.StrEnum):
    """Where this agent stands, which decides what it probes."""

    EXCHANGE = "exchange"  # on an internal Exchange server
    EDGE = "edge"  # on an Edge Transport server
    DC = "dc"  # on a domain controller
    OBSERVER = "observer"  # a monitoring host outside the inventory: probes every member's ports
    CLIENT = "client"  # a client network zone: only client endpoints


@dataclass(frozen=True, slots=True)
class NetworkPath:
    """One thing to prove: `source` can reach `target` on `port/proto` and `check` says so."""

    source: str
    source_site: str
    target: str  # FQDN
    target_site: str
    target_role: str
    port: int
    proto: str
    service: str
    kind: PathKind
    check: str
    address: str | None = None  # from the inventory; resolved from `target` when None
    #: probed from an Exchange server or a DC: Microsoft's rule judges the path (an observer's is only
    #: reported: a monitoring host may legitimately sit behind a firewall of its own)
    judged: bool = True
    #: the catalogue cannot confirm a listener on every such server (PortEntry.advisory): reported only
    advisory: bool = False
    #: the address family probed, "ipv4" or "ipv6": a dual-stack target is a path per family (Windows
    #: prefers IPv6, so an IPv6-only block is an outage); "" when the name is resolved at probe time to
    #: whatever it gives first
    family: str = ""
    #: "" for the target's first address of its family; the address itself for a further one (a DAG
    #: replication network), so that each address is a path of its own
    endpoint: str = ""

    @property
    def required(self) -> bool:
        return self.kind in REQUIRED_KINDS and not self.advisory

    @property
    def key(self) -> tuple[str | int, ...]:
        """What identifies the path across plans and restarts. An IPv4 (or unspecified) path keeps the
        key paths had before families were planned, so existing baselines carry over."""
        base: tuple[str | int, ...] = (self.source, self.target.lower(), self.port, self.proto, self.check)
        if self.endpoint:
            return (*base, self.endpoint)
        return (*base, self.family) if self.family == "ipv6" else base


# When one port is planned under several kinds (an observer sees 443 as both an Exchange-Exchange and a
# client port), the path keeps the kind that says most about supportability.
_KIND_PRIORITY = {
    PathKind.EXCHANGE_EXCHANGE: 0,
    PathKind.EXCHANGE_DC: 1,
    PathKind.EDGE: 2,
    PathKind.CLIENT_EXCHANGE: 3,
}


def vantage_of(member: Member | None, requested: Vantage | None = None) -> Vantage:
    if requested is not None:
        return requested
    if member is None:
        return Vantage.OBSERVER
    if isinstance(member, DomainController):
        return Vantage.DC
    return Vantage.EDGE if member.is_edge else Vantage.EXCHANGE


def roles_of(server: Server) -> frozenset[Role]:
    """The roles `server` runs, in the catalogue's terms: each product's role layout folded in.

    2013: Client Access is the front end (CAFE and the Front End Transport service); Mailbox is the back end,
    whose Transport service counts as Hub Transport. 2016+: Mailbox holds the front end and the back end
    (and UM in 2016). 2010: the roles as they are.
    """
    roles = set(server.roles)
    product = server.version.product
    if product is Product.EX2013:
        if roles & {Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT}:
            roles |= {Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT}
        if Role.MAILBOX in roles:
            roles.add(Role.HUB_TRANSPORT)
    elif product in (Product.EX2016, Product.EX2019, Product.SE) and Role.MAILBOX in roles:
        roles |= {Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT, Role.HUB_TRANSPORT}
        if product is Product.EX2016:
            roles.add(Role.UM)
    return frozenset(roles)


def _serves(entry: PortEntry, target: Member) -> bool:
    if isinstance(target, DomainController):
        return entry.roles == DC or (entry.roles == GC and target.global_catalog)
    if isinstance(entry.roles, str):
        return False
    if target.version.product not in entry.products:
        return False
    if entry.dag_only and not target.dag:
        return False
    roles = roles_of(target)
    return bool(roles & entry.roles) and entry.with_roles <= roles


def _same_edge_site(me: Member | None, other: Member) -> bool:
    """Edge traffic stays within the Edge subscription's AD site (the Edge server's site)."""
    return me is None or me.site == other.site


def _entries_for(
    vantage: Vantage, target: Member, optional: frozenset[str], me: Member | None = None
) -> Iterable[PortEntry]:
    target_is_edge = isinstance(target, Server) and target.is_edge
    # internal -> Edge: only 2010 Hub Transport / 2013+ Mailbox servers of the subscribed site send there
    sends_to_edge = me is None or (
        isinstance(me, Server) and bool(roles_of(me) & EDGE_SENDERS) and _same_edge_site(me, target)
    )
    for entry in CATALOGUE:
        if entry.optional and entry.service not in optional:
            continue
        if not _serves(entry, target):
            continue
        kind = entry.kind
        if target_is_edge:
            # Edge gets only its documented paths, never the internal ANY/ANY set.
            if kind is PathKind.EDGE and (
                vantage is Vantage.OBSERVER or (vantage is Vantage.EXCHANGE and sends_to_edge)
            ):
                yield entry
            continue
        if vantage is Vantage.EXCHANGE:
            if kind in (PathKind.EXCHANGE_EXCHANGE, PathKind.EXCHANGE_DC):
                yield entry
        elif vantage is Vantage.EDGE:
            if kind is PathKind.EDGE and _same_edge_site(me, target):
                yield entry
        elif vantage is Vantage.DC:
            # DC -> Exchange: the reverse direction of the ANY/ANY rule; RPC and SMB are what a DC opens.
            if kind is PathKind.EXCHANGE_EXCHANGE and entry.port in (135, 445):
                yield dataclasses.replace(entry, kind=PathKind.EXCHANGE_DC)
        elif vantage is Vantage.OBSERVER:
            if kind is not PathKind.EDGE:
                yield entry
        elif vantage is Vantage.CLIENT and kind is PathKind.CLIENT_EXCHANGE:
            yield entry


def plan(
    inventory: Inventory,
    source: str,
    *,
    vantage: Vantage | None = None,
    checks: frozenset[str] | None = None,
    optional_services: frozenset[str] = frozenset(),
    source_site: str | None = None,
    connect_only: bool = False,
    witnesses: Mapping[str, str] | None = None,
    families: Mapping[str, frozenset[str]] | None = None,
) -> list[NetworkPath]:
    """Every path `source` must probe, deduplicated, in a stable order.

    `checks` limits the plan to probe kinds this build can run (None: all of them). `connect_only` turns
    every TCP row into a bare connect and leaves out the UDP rows (whose only proof is a protocol answer).
    `witnesses` maps a DAG's name to its file share witness server's FQDN (the DAG object's
    msExchFileShareWitness): the DAG's members probe SMB there, an observer probes every DAG's witness.
    `families` maps a target FQDN (one given by name, without an address) to the address families its
    name resolves to: a path is planned for each. Targets with addresses get a path per address.
    """
    me = inventory.find(source)
    where = vantage_of(me, vantage)
    source_site = me.site if me is not None else (source_site or "")
    judged = where in (Vantage.EXCHANGE, Vantage.DC)  # Microsoft's rule is about these hosts' traffic
    paths: dict[tuple[str, int, str, str, str], NetworkPath] = {}
    targets: list[tuple[Member | _Witness, Iterable[PortEntry]]] = []
    for member in inventory.members():
        if me is not None and member is me:
            continue
        if where is Vantage.DC and isinstance(member, DomainController):
            continue  # DC <-> DC replication is AD's business, not Exchange's
        targets.append((member, _expand(_entries_for(where, member, optional_services, me), member, where)))
    targets.extend(_witness_targets(inventory, me, where, witnesses or {}))
    for target, entries in targets:
        for entry in entries:
            if connect_only:
                if entry.proto != "tcp":
                    continue
                entry = dataclasses.replace(entry, check="tcp")
            if checks is not None and entry.check not in checks:
                continue
            for address, family, endpoint in _endpoints(target, families or {}):
                path = NetworkPath(
                    source=source,
                    source_site=source_site,
                    target=target.fqdn,
                    target_site=target.site,
                    target_role=target.primary_role,
                    port=entry.port,
                    proto=entry.proto,
                    service=entry.service,
                    kind=entry.kind,
                    check=entry.check,
                    address=address,
                    judged=judged,
                    advisory=entry.advisory,
                    family=family,
                    endpoint=endpoint,
                )
                # one path (and series) per port and address
                key = (target.fqdn.lower(), entry.port, entry.proto, family, endpoint)
                existing = paths.get(key)
                if existing is None or _rank(path) < _rank(existing):
                    paths[key] = path
    return sorted(
        paths.values(),
        key=lambda p: (p.target_site, p.target.lower(), p.proto, p.port, p.check, p.family, p.endpoint),
    )


def family_of(address: str) -> str:
    """ "ipv4" or "ipv6" for an address literal ("" for anything else)."""
    try:
        return "ipv6" if ipaddress.ip_address(address.strip("[]")).version == 6 else "ipv4"
    except ValueError:
        return ""


def _endpoints(
    target: Member | _Witness, families: Mapping[str, frozenset[str]]
) -> list[tuple[str | None, str, str]]:
    """(address, family, endpoint) for each path a port of `target` gets: one per address the inventory
    gives (the first of each family has endpoint ""), else one per family its name resolves to, else one
    resolved at probe time."""
    extra = tuple(getattr(target, "addresses", ()))
    found: list[tuple[str | None, str, str]] = []
    seen: set[str] = set()
    if target.address:
        literal = [target.address, *extra]
    else:
        for family in sorted(families.get(target.fqdn.lower(), frozenset())) or [""]:
            found.append((None, family, ""))
            seen.add(family)
        literal = list(extra)
    for address in dict.fromkeys(literal):
        family = family_of(address)
        found.append((address, family, address if family in seen else ""))
        seen.add(family)
    return found


def _rank(path: NetworkPath) -> tuple[int, bool]:
    """Which of two rows planned for one port the path keeps: the most telling kind, then a judging row."""
    return (_KIND_PRIORITY[path.kind], path.advisory)


@dataclass(frozen=True, slots=True)
class _Witness:
    """A DAG's file share witness server: usually not in the inventory, so only what the DAG names."""

    fqdn: str
    site: str = ""
    address: str | None = None
    primary_role: str = "witness"


def _witness_targets(
    inventory: Inventory, me: Member | None, where: Vantage, witnesses: Mapping[str, str]
) -> Iterable[tuple[Member | _Witness, Iterable[PortEntry]]]:
    """The witness row (SMB) towards each witness this source must reach: its own DAG's when it is a DAG
    member, every DAG's for an observer. A witness that is in the inventory keeps its site and address."""
    if where is Vantage.EXCHANGE and isinstance(me, Server) and me.dag:
        wanted = [fqdn for dag, fqdn in witnesses.items() if dag.lower() == me.dag.lower()]
    elif where is Vantage.OBSERVER:
        wanted = list(witnesses.values())
    else:
        return
    rows = tuple(entry for entry in CATALOGUE if entry.roles == WITNESS)
    for fqdn in sorted({w.lower().rstrip(".") for w in wanted if w}):
        member = inventory.find(fqdn)
        if me is not None and member is me:
            continue
        target = member or _Witness(fqdn)
        yield target, rows


def _expand(entries: Iterable[PortEntry], target: Member, where: Vantage) -> Iterable[PortEntry]:
    """Apply per-server facts: the DAG's own replication port and Exchange 2010 static RPC ports."""
    for entry in entries:
        if entry.service == "dag-replication" and isinstance(target, Server):
            port = target.dag_replication_port or DEFAULT_DAG_REPLICATION_PORT
            yield dataclasses.replace(entry, port=port)
            continue
        yield entry
    if (
        where in (Vantage.OBSERVER, Vantage.CLIENT)
        and isinstance(target, Server)
        and target.static_rpc_ports
        and Role.CLIENT_ACCESS in target.roles
    ):
        rpc = target.static_rpc_ports
        pinned = ((rpc.rpc_client_access, "rpc-static-rca"), (rpc.address_book, "rpc-static-ab"))
        for static_port, service in pinned:
            if static_port:
                yield PortEntry(PathKind.CLIENT_EXCHANGE, static_port, "tcp", service, "tcp")


def parse_shard(text: str) -> tuple[int, int]:
    """`2/5` -> (2, 5): this prober is shard 2 of 5 (1-based)."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 1 <= int(index) <= int(count):
        raise ConfigError(f"--shard {text!r} is not i/n with 1 <= i <= n", fix="e.g. --shard 1/3")
    return int(index), int(count)


def _weight(key: tuple[object, ...], shard: int) -> bytes:
    text = "|".join(map(str, key[1:])) + f"#{shard}"  # not the source: every prober must agree
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def shard(paths: Iterable[NetworkPath], index: int, count: int) -> list[NetworkPath]:
    """The paths that belong to shard `index` of `count`, by rendezvous (highest random weight) hashing:
    every prober computes the same split, and adding a prober moves only the paths it takes over."""
    if count == 1:
        return list(paths)
    return [path for path in paths if max(range(1, count + 1), key=lambda s: _weight(path.key, s)) == index]


def dynamic_rpc_paths(mapper: NetworkPath, endpoints: Iterable[tuple[str, int]]) -> tuple[NetworkPath, ...]:
    """The dynamic RPC ports an endpoint mapper registered, each as a path of its own: the mapper's path
    with the port found, service "rpc:<interface>" and a bare connect. Impossible ports are left out, and
    a port listed under several interfaces is one path, named after the first (the probe lists the most
    telling first): its key has no service, and two paths under one key would be one record twice."""
    found: dict[int, NetworkPath] = {}
    for name, port in endpoints:
        if 0 < port < 65536 and port != mapper.port and port not in found:
            found[port] = dataclasses.replace(mapper, port=port, service=f"rpc:{name}", check="tcp")
    return tuple(sorted(found.values(), key=lambda p: (p.service, p.port)))
