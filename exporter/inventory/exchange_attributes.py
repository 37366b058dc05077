"""Exchange's own attributes on its server objects, decoded: msExchCurrentServerRoles into our roles,
serialNumber and versionNumber into a build. Pure functions of the attribute values; nothing here knows
about LDAP connections (ldap.py reads the values and calls these).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.inventory.model import Role


@dataclass(frozen=True)
class RoleBit:
    """One bit of msExchCurrentServerRoles (Exchange's ServerRole enum) and what it means to us."""

    bit: int
    name: str
    role_2010: Role | None  # the Role it stands for on Exchange 2010 (major 14)
    role_2013: Role | None  # ... and on 2013 and later (major 15)


# The one table of role bits. In 2013+ the ClientAccess bit sits on the back end (Mailbox) and Cafe is
# the client-facing front end, so Cafe means clientaccess there.
ROLE_BITS: tuple[RoleBit, ...] = (
    RoleBit(1, "Cafe", None, Role.CLIENT_ACCESS),
    RoleBit(2, "Mailbox", Role.MAILBOX, Role.MAILBOX),
    RoleBit(4, "ClientAccess", Role.CLIENT_ACCESS, None),
    RoleBit(16, "UnifiedMessaging", Role.UM, Role.UM),
    RoleBit(32, "HubTransport", Role.HUB_TRANSPORT, Role.HUB_TRANSPORT),
    RoleBit(64, "Edge", Role.EDGE, Role.EDGE),
    RoleBit(128, "Monitoring", None, None),
    RoleBit(256, "CentralAdmin", None, None),
    RoleBit(512, "CentralAdminDatabase", None, None),
    RoleBit(1024, "DomainController", None, None),
    RoleBit(2048, "WindowsDeploymentServer", None, None),
    RoleBit(4096, "ProvisionedServer", None, None),
    RoleBit(8192, "LanguagePacks", None, None),
    RoleBit(16384, "FrontendTransport", None, Role.FRONTEND_TRANSPORT),
    RoleBit(32768, "CafeArray", None, None),
    RoleBit(65536, "FfoWebService", None, None),
)
_KNOWN_ROLE_BITS = sum(r.bit for r in ROLE_BITS)


@dataclass(frozen=True)
class DecodedRoles:
    roles: frozenset[Role]
    names: tuple[str, ...]  # every known bit set, by Exchange's name
    unknown_bits: int


def decode_roles(mask: int, major: int) -> DecodedRoles:
    """msExchCurrentServerRoles -> our roles; bits nobody knows are returned, not dropped."""
    roles = set()
    names = []
    for row in ROLE_BITS:
        if mask & row.bit:
            names.append(row.name)
            role = row.role_2010 if major < 15 else row.role_2013
            if role is not None:
                roles.add(role)
    return DecodedRoles(frozenset(roles), tuple(names), mask & ~_KNOWN_ROLE_BITS)


_SERIAL = re.compile(r"^\s*Version (\d+)\.(\d+) \(Build (\d+)\.(\d+)\)\s*$")
SERIAL_BUILD_OFFSET = 30000  # 15.x serialNumber builds are 30000 + the real build


def version_from_serial(text: str) -> tuple[int, int, int, int] | None:
    """`Version 15.2 (Build 31118.7)` -> (15, 2, 1118, 7); None when it is not in that form."""
    match = _SERIAL.match(text)
    if not match:
        return None
    major, minor, build, revision = (int(g) for g in match.groups())
    if major >= 15 and build >= SERIAL_BUILD_OFFSET:
        build -= SERIAL_BUILD_OFFSET
    return major, minor, build, revision


def version_from_number(value: int) -> tuple[int, int, int] | None:
    """versionNumber: legacy(4)=7 | major(6) | minor(6) | flag(1) | build(15); None unless 2010 or later."""
    if value < 0 or value >> 32:
        return None
    legacy, major, minor, build = value >> 28, (value >> 22) & 0x3F, (value >> 16) & 0x3F, value & 0x7FFF
    if legacy != 7 or major not in (14, 15):
        return None
    if major >= 15 and build >= SERIAL_BUILD_OFFSET:
        build -= SERIAL_BUILD_OFFSET
    return major, minor, build
