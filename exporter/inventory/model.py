"""The organisation as the rest of the pipeline sees it: Exchange servers, domain controllers, sites.

Every inventory source (static file, LDAP, DNS SRV) produces these objects; nothing downstream knows
which source it came from.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from exporter.errors import ConfigError
from exporter.text import safe_text


class Role(enum.StrEnum):
    """Exchange server roles as an administrator names them."""

    MAILBOX = "mailbox"
    CLIENT_ACCESS = "clientaccess"
    HUB_TRANSPORT = "hubtransport"
    FRONTEND_TRANSPORT = "frontendtransport"
    EDGE = "edge"
    UM = "um"


class Product(enum.StrEnum):
    """Exchange product generations; the port catalogue is keyed on these."""

    EX2010 = "2010"
    EX2013 = "2013"
    EX2016 = "2016"
    EX2019 = "2019"
    SE = "SE"


# Exchange SE RTM is 15.2.2562.17; every 15.2 build from 2562 on is SE, below it is 2019.
SE_FIRST_BUILD = 2562
_BUILD = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?$")


@dataclass(frozen=True, slots=True)
class Version:
    """An Exchange version: the product generation and, when known, the exact build."""

    product: Product
    build: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `"2019"`, `"SE"` or a build such as `"15.2.1544.4"`."""
        value = str(text).strip()
        for product in Product:
            if value.upper() == product.value.upper():
                return cls(product)
        match = _BUILD.match(value)
        if not match:
            raise ConfigError(
                f"unknown Exchange version {value!r}",
                fix='use "2010", "2013", "2016", "2019", "SE" or a build number such as "15.2.1544.4"',
            )
        numbers = tuple(int(part) for part in match.groups() if part is not None)
        return cls(product_of_build(numbers), numbers)

    def __str__(self) -> str:
        return ".".join(map(str, self.build)) if self.build else self.product.value


def product_of_build(build: tuple[int, ...]) -> Product:
    """Map a build number (major, minor, build, ...) to its product generation."""
    major, minor = build[0], build[1]
    if major == 14:
        return Product.EX2010
    if major == 15 and minor == 0:
        return Product.EX2013
    if major == 15 and minor == 1:
        return Product.EX2016
    if major == 15 and minor == 2:
        if len(build) > 2 and build[2] >= SE_FIRST_BUILD:
            return Product.SE
        return Product.EX2019
    raise ConfigError(
        f"build {'.'.join(map(str, build))} is not an Exchange 2010-SE build",
        fix="supported majors are 14 (2010) and 15.0-15.2 (2013, 2016, 2019, SE)",
    )


@dataclass(frozen=True, slots=True)
class StaticRpcPorts:
    """Static ports an Exchange 2010 admin pins for Outlook's RPC/TCP (Client Access and Address Book)."""

    rpc_client_access: int | None = None
    address_book: int | None = None


@dataclass(frozen=True, slots=True)
class Server:
    """One Exchange server."""

    name: str
    fqdn: str
    roles: frozenset[Role]
    version: Version
    site: str
    address: str | None = None
    static_rpc_ports: StaticRpcPorts | None = None
    dag: str | None = None
    dag_replication_port: int | None = None
    #: further addresses the server must be reached on, each probed as paths of its own: its other
    #: family (IPv6 beside IPv4), a DAG replication network
    addresses: tuple[str, ...] = ()

    @property
    def is_edge(self) -> bool:
        return Role.EDGE in self.roles

    @property
    def primary_role(self) -> str:
        """The one role used as a metric label: bounded to the Role values."""
        for role in (
            Role.EDGE,
            Role.MAILBOX,
            Role.CLIENT_ACCESS,
            Role.HUB_TRANSPORT,
            Role.FRONTEND_TRANSPORT,
            Role.UM,
        ):
            if role in self.roles:
                return role.value
        return "unknown"


@dataclass(frozen=True, slots=True)
class DomainController:
    """One AD domain controller (and global catalog when `global_catalog`)."""

    name: str
    fqdn: str
    site: str
    global_catalog: bool = False
    read_only: bool = False
    address: str | None = None
    addresses: tuple[str, ...] = ()  # further addresses, each probed as paths of its own

    @property
    def primary_role(self) -> str:
        if self.read_only:
            return "rodc"
        return "gc" if self.global_catalog else "dc"


Member = Server | DomainController


@dataclass(frozen=True, slots=True)
class Inventory:
    """An organisation: who exists, where. Immutable; a refresh produces a new one."""

    organisation: str
    servers: tuple[Server, ...] = ()
    domain_controllers: tuple[DomainController, ...] = ()
    source: str = "static"
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: (DAG name, its file share witness server's FQDN or host name): the DAG members reach it on 445
    witnesses: tuple[tuple[str, str], ...] = ()

    def members(self) -> Iterable[Member]:
        yield from self.servers
        yield from self.domain_controllers

    def find(self, identity: str) -> Member | None:
        """The member this identity names (by FQDN or short name, case-insensitive)."""
        wanted = identity.lower().rstrip(".")
        for member in self.members():
            if member.fqdn.lower().rstrip(".") == wanted or member.name.lower() == wanted:
                return member
        return None

    def sites(self) -> list[str]:
        return sorted({member.site for member in self.members()})


# ---- untrusted text --------------------------------------------------------------------------------------
_M = TypeVar("_M", Server, DomainController)


def neutralise(inventory: Inventory) -> Inventory:
    """The inventory with its free text (organisation, names, sites, DAGs) made safe to show anywhere.

    Sources call this last. Each member whose text changed gets a warning naming it; nothing is dropped.
    """
    warnings = [safe_text(w) for w in inventory.warnings]

    def clean(member: _M) -> _M:
        changes: dict[str, Any] = {}
        for attr in ("name", "site", "dag"):
            value = getattr(member, attr, None)
            if isinstance(value, str) and safe_text(value) != value:
                changes[attr] = safe_text(value)
        if not changes:
            return member
        warnings.append(
            f"{member.fqdn}: {', '.join(changes)} held control, line-separator or bidi characters; "
            "each is shown as U+FFFD"
        )
        return replace(member, **changes)

    servers = tuple(clean(s) for s in inventory.servers)
    dcs = tuple(clean(d) for d in inventory.domain_controllers)
    organisation = safe_text(inventory.organisation)
    if organisation != inventory.organisation:
        warnings.append("the organisation name held control characters; each is shown as U+FFFD")
    witnesses = tuple((safe_text(dag), host) for dag, host in inventory.witnesses)
    return Inventory(
        organisation, servers, dcs, source=inventory.source, warnings=tuple(warnings), witnesses=witnesses
    )
