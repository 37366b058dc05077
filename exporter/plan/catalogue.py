"""The port catalogue: every port an Exchange organisation uses, as one table of data.

Source: ../shared/exchange-reference.md (sections 1-7; Microsoft's network-ports docs, the firewall rules
Exchange setup creates, KB179442 for AD). The table says which ports a *target* serves, for which path
kind, Exchange product and role; the planner decides who probes them.

`required` follows Microsoft's support rule: traffic between Exchange servers and between Exchange and
domain controllers must not be restricted at all, so every port of those kinds is required; Edge
Transport and client paths may legitimately be filtered and never count toward the verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from exporter.inventory.model import Product, Role


class PathKind(enum.StrEnum):
    EXCHANGE_EXCHANGE = "exchange-exchange"
    EXCHANGE_DC = "exchange-dc"
    CLIENT_EXCHANGE = "client-exchange"
    EDGE = "edge"


#: kinds whose paths Microsoft requires to be unrestricted (ANY/ANY both ways)
REQUIRED_KINDS = frozenset({PathKind.EXCHANGE_EXCHANGE, PathKind.EXCHANGE_DC})

#: target selectors for domain-controller rows
DC = "dc"  # every domain controller
GC = "gc"  # only global catalogs

ALL_PRODUCTS = frozenset(Product)
P2010 = frozenset({Product.EX2010})
P2013_UP = frozenset({Product.EX2013, Product.EX2016, Product.EX2019, Product.SE})
P2016_UP = frozenset({Product.EX2016, Product.EX2019, Product.SE})
P_UM = frozenset({Product.EX2013, Product.EX2016})  # UM is gone in 2019 and SE

MBX = frozenset({Role.MAILBOX})
CAS = frozenset({Role.CLIENT_ACCESS})
HUB = frozenset({Role.HUB_TRANSPORT})
CAS_OR_MBX = frozenset({Role.MAILBOX, Role.CLIENT_ACCESS})
TRANSPORT = frozenset({Role.MAILBOX, Role.CLIENT_ACCESS, Role.HUB_TRANSPORT, Role.FRONTEND_TRANSPORT})
ANY_INTERNAL = frozenset(
    {Role.MAILBOX, Role.CLIENT_ACCESS, Role.HUB_TRANSPORT, Role.FRONTEND_TRANSPORT, Role.UM}
)
EDGE = frozenset({Role.EDGE})
UM = frozenset({Role.UM, Role.MAILBOX, Role.CLIENT_ACCESS})


@dataclass(frozen=True, slots=True)
class PortEntry:
    """One row: a port that targets of this kind, product and role serve."""

    kind: PathKind
    port: int
    proto: str  # "tcp" | "udp"
    service: str  # bounded label value
    check: str  # the probe that proves it: "tcp" (connect) or a protocol check name
    products: frozenset[Product] = ALL_PRODUCTS
    roles: frozenset[Role] | str = ANY_INTERNAL  # target needs one of these roles, or DC / GC
    dag_only: bool = False  # only on DAG members
    optional: bool = False  # disabled by default in Exchange (POP/IMAP): probed only when enabled
    note: str = ""

    @property
    def required(self) -> bool:
        return self.kind in REQUIRED_KINDS


XX = PathKind.EXCHANGE_EXCHANGE
XD = PathKind.EXCHANGE_DC
CX = PathKind.CLIENT_EXCHANGE
ED = PathKind.EDGE

CATALOGUE: tuple[PortEntry, ...] = (
    # ---- Exchange <-> Exchange: what traffic actually uses (the policy is ANY/ANY) ----
    PortEntry(XX, 25, "tcp", "smtp", "smtp", roles=TRANSPORT, note="FET Default Frontend / 2010 Hub"),
    PortEntry(XX, 80, "tcp", "http", "tcp", note="Remote PowerShell /PowerShell (Kerberos)"),
    PortEntry(XX, 135, "tcp", "rpc-epm", "rpc-epm", note="RPC endpoint mapper; dynamic ports follow"),
    PortEntry(XX, 139, "tcp", "netbios-ssn", "tcp", products=P2013_UP, note="CAFE remote registry rule"),
    PortEntry(
        XX, 443, "tcp", "https", "https-health", products=P2013_UP, note="cross-site proxy and redirect"
    ),
    PortEntry(XX, 443, "tcp", "https", "tcp", products=P2010, note="cross-site proxy and redirect"),
    PortEntry(
        XX,
        444,
        "tcp",
        "https-backend",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        note="Exchange Back End site: front end proxies every HTTP protocol here",
    ),
    PortEntry(XX, 445, "tcp", "smb", "smb", note="SMB, file share witness"),
    PortEntry(
        XX,
        465,
        "tcp",
        "smtp-clientproxy",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        note="Transport Client Proxy (plain SMTP + STARTTLS)",
    ),
    PortEntry(
        XX,
        475,
        "tcp",
        "smtp-delivery",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        note="Mailbox Transport Delivery",
    ),
    PortEntry(XX, 587, "tcp", "smtp-submission", "smtp", products=P2013_UP, roles=CAS_OR_MBX),
    PortEntry(XX, 587, "tcp", "smtp-submission", "smtp", products=P2010, roles=HUB),
    PortEntry(
        XX,
        717,
        "tcp",
        "smtp-outproxy",
        "smtp",
        products=P2013_UP,
        roles=CAS_OR_MBX,
        note="Outbound Proxy Frontend",
    ),
    PortEntry(XX, 808, "tcp", "mrs", "tcp", roles=CAS_OR_MBX, note="Mailbox Replication Service"),
    PortEntry(
        XX,
        2525,
        "tcp",
        "smtp-transport",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        note="Transport service Default receive connector",
    ),
    PortEntry(XX, 3343, "tcp", "cluster", "tcp", roles=MBX, dag_only=True, note="failover cluster"),
    PortEntry(
        XX,
        64327,
        "tcp",
        "dag-replication",
        "tcp",
        roles=MBX,
        dag_only=True,
        note="DAG log copy and seeding; the DAG's msExchMDBAvailabilityGroupReplicationPort",
    ),
    PortEntry(
        XX,
        64337,
        "tcp",
        "ha-webservice",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        note="MSExchangeRepl High Availability Web Service",
    ),
    PortEntry(XX, 5062, "tcp", "um-sip", "tcp", products=P_UM, roles=UM, note="UM service SIP"),
    PortEntry(XX, 5063, "tcp", "um-sips", "tcp", products=P_UM, roles=UM, note="UM service SIP/TLS"),
    PortEntry(
        XX,
        6001,
        "tcp",
        "rpc-http-store",
        "tcp",
        products=P2010,
        roles=CAS_OR_MBX,
        note="Outlook Anywhere back end",
    ),
    # ---- Exchange -> domain controllers (KB179442, the 2010 port reference) ----
    PortEntry(XD, 53, "tcp", "dns", "dns-tcp", roles=DC),
    PortEntry(XD, 53, "udp", "dns", "dns", roles=DC),
    PortEntry(XD, 88, "tcp", "kerberos", "kerberos-tcp", roles=DC),
    PortEntry(XD, 88, "udp", "kerberos", "kerberos", roles=DC),
    PortEntry(XD, 123, "udp", "ntp", "ntp", roles=DC),
    PortEntry(XD, 135, "tcp", "rpc-epm", "rpc-epm", roles=DC),
    PortEntry(XD, 389, "tcp", "ldap", "ldap-rootdse", roles=DC),
    PortEntry(XD, 389, "udp", "cldap", "cldap", roles=DC),
    PortEntry(XD, 445, "tcp", "smb", "smb", roles=DC),
    PortEntry(XD, 464, "tcp", "kpasswd", "tcp", roles=DC),
    PortEntry(XD, 636, "tcp", "ldaps", "ldaps", roles=DC),
    PortEntry(XD, 3268, "tcp", "gc", "gc", roles=GC),
    PortEntry(XD, 3269, "tcp", "gc-ssl", "gc-ssl", roles=GC),
    # ---- clients -> Client Access ----
    PortEntry(CX, 80, "tcp", "http", "tcp", roles=CAS_OR_MBX, note="OWA redirect, Autodiscover fallback"),
    PortEntry(
        CX,
        443,
        "tcp",
        "https",
        "https-health",
        products=P2013_UP,
        roles=CAS_OR_MBX,
        note="Autodiscover, EWS, OWA, ECP, EAS, OAB, MAPI/HTTP, RPC/HTTP: the healthcheck.htm pages",
    ),
    PortEntry(
        CX, 443, "tcp", "https", "tcp", products=P2010, roles=CAS_OR_MBX, note="2010 has no health pages"
    ),
    PortEntry(CX, 587, "tcp", "smtp-submission", "smtp", products=P2013_UP, roles=CAS_OR_MBX),
    PortEntry(CX, 587, "tcp", "smtp-submission", "smtp", products=P2010, roles=HUB),
    PortEntry(
        CX,
        135,
        "tcp",
        "rpc-epm",
        "rpc-epm",
        products=P2010,
        roles=CAS,
        note="Outlook RPC/TCP (2010 only) resolves EMSMDB/NSPI here",
    ),
    PortEntry(CX, 110, "tcp", "pop3", "tcp", roles=CAS_OR_MBX, optional=True),
    PortEntry(CX, 995, "tcp", "pop3s", "tcp", roles=CAS_OR_MBX, optional=True),
    PortEntry(CX, 143, "tcp", "imap", "tcp", roles=CAS_OR_MBX, optional=True),
    PortEntry(CX, 993, "tcp", "imaps", "tcp", roles=CAS_OR_MBX, optional=True),
    PortEntry(CX, 5060, "tcp", "um-callrouter-sip", "tcp", products=P_UM, roles=UM, optional=True),
    PortEntry(CX, 5061, "tcp", "um-callrouter-sips", "tcp", products=P_UM, roles=UM, optional=True),
    # ---- Edge Transport (perimeter: filtering allowed, only these are documented) ----
    PortEntry(ED, 25, "tcp", "smtp", "smtp", roles=EDGE, note="Mailbox Transport -> Edge"),
    PortEntry(ED, 50636, "tcp", "edgesync", "tcp", roles=EDGE, note="EdgeSync: AD LDS over LDAPS"),
    PortEntry(ED, 25, "tcp", "smtp", "smtp", roles=MBX, note="Edge -> Mailbox FET Default Frontend"),
)

#: the protocol each non-"tcp" check speaks; "tcp" is a bare connect. https-health fetches every
#: healthcheck.htm page (one exchange_protocol_up series each); rpc-epm also yields the dynamic RPC ports
#: of the interfaces that matter, each probed as its own path (service "rpc:<interface>").
CHECKS = frozenset(entry.check for entry in CATALOGUE)

#: bounded label values, documented in the README
SERVICES = (
    frozenset(entry.service for entry in CATALOGUE)
    | {"rpc-static-rca", "rpc-static-ab"}
    | {"rpc:drsuapi", "rpc:netlogon", "rpc:emsmdb", "rpc:nspi"}
)
