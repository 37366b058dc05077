"""The port catalogue: every port an Exchange organisation uses, as one table of data.

Source: ../shared/exchange-reference.md, checked against Microsoft's own pages; where they disagree the
Microsoft page wins. Every row names the page it was verified against (`source`, one of the URLs below).
The table says which ports a *target* serves, for which path kind, Exchange product and role; the planner
decides who probes them.

Roles are matched after the planner has folded each product's role layout (`planner.roles_of`):
- 2010: Mailbox, Client Access, Hub Transport, Unified Messaging and Edge are separate roles.
- 2013: Client Access is the front end (CAFE and the Front End Transport service: FRONT_END here);
  Mailbox is the back end (the Transport service, so it also counts as HUB; the UM service).
- 2016, 2019, SE: only Mailbox and Edge; Mailbox holds the front end and the back end (and UM in 2016).

`required` follows Microsoft's support rule: traffic between Exchange servers and between Exchange and
domain controllers must not be restricted at all, so every port of those kinds is required, except rows
marked `advisory` (no Microsoft page says every such server listens there: reported, never counted);
Edge Transport and client paths may legitimately be filtered and never count toward the verdict.
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

#: target selectors for rows whose target is not an Exchange server
DC = "dc"  # every domain controller
GC = "gc"  # only global catalogs
WITNESS = "witness"  # a DAG's file share witness server (the planner's `witnesses`, read from the DAG)

ALL_PRODUCTS = frozenset(Product)
P2010 = frozenset({Product.EX2010})
P2013 = frozenset({Product.EX2013})
P2013_UP = frozenset({Product.EX2013, Product.EX2016, Product.EX2019, Product.SE})
P_UM = frozenset({Product.EX2013, Product.EX2016})  # UM is gone in 2019 and SE

MBX = frozenset({Role.MAILBOX})
CAS = frozenset({Role.CLIENT_ACCESS})
HUB = frozenset({Role.HUB_TRANSPORT})  # 2010 Hub Transport; the Transport service on a 2013+ Mailbox
UM = frozenset({Role.UM})  # the 2010 Unified Messaging role
#: the 2013+ front end: CAFE and the Front End Transport service (2013 Client Access, 2016+ Mailbox)
FRONT_END = frozenset({Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT})
#: 2013+ servers with an SMTP listener on 25: the front end's FET, or a standalone 2013 Mailbox's Transport
SMTP_2013_UP = frozenset({Role.MAILBOX, Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT})
ANY_INTERNAL = frozenset(
    {Role.MAILBOX, Role.CLIENT_ACCESS, Role.HUB_TRANSPORT, Role.FRONTEND_TRANSPORT, Role.UM}
)
EDGE = frozenset({Role.EDGE})

# ---- the pages every row was verified against ----
#: 2016/2019/SE: clients, mail flow, Edge; and the support rule (no restriction between Exchange servers)
PORTS_2016 = "https://learn.microsoft.com/en-us/exchange/plan-and-deploy/deployment-ref/network-ports"
PORTS_2013 = (
    "https://learn.microsoft.com/en-us/exchange/"
    "network-ports-for-clients-and-mail-flow-in-exchange-2013-exchange-2013-help"
)
PORTS_2010 = (
    "https://learn.microsoft.com/en-us/previous-versions/office/exchange-server-2010/bb331973(v=exchg.141)"
)
RECEIVE_CONNECTORS = "https://learn.microsoft.com/en-us/exchange/mail-flow/connectors/receive-connectors"
RECEIVE_CONNECTORS_2010 = (
    "https://blogs.technet.microsoft.com/rmilne/2018/04/03/exchange-2010-default-connector-configuration/"
)
CLIENT_ACCESS_2010 = "https://technet.microsoft.com/en-us/library/bb124915"
ADDRESS_BOOK_2010 = (
    "https://learn.microsoft.com/en-us/previous-versions/exchange-server/exchange-140/ee332346(v=exchg.140)"
)
REMOTE_POWERSHELL = "https://learn.microsoft.com/en-us/powershell/exchange/connect-to-exchange-servers-using-remote-powershell"
BACK_END_444 = (
    "https://learn.microsoft.com/en-us/archive/blogs/miguelo/"
    "exchange-2013-clients-not-able-to-connect-using-outlook-anywhere"
)
BACK_END_81 = "https://github.com/microsoft/CSS-Exchange/pull/2272"  # Microsoft's HealthChecker: *:81, *:444
MRS = "https://learn.microsoft.com/en-us/exchange/recipients/mailbox-import-and-export/mailbox-import-and-export"
UM_PORTS = "https://learn.microsoft.com/en-us/exchange/um-protocols-ports-and-services-exchange-2013-help"
DAG_REPLICATION = "https://learn.microsoft.com/en-us/powershell/module/exchange/set-databaseavailabilitygroup"
DAG_WITNESS = "https://learn.microsoft.com/en-us/exchange/high-availability/manage-ha/manage-dags"
#: KB 832017: Windows services' ports (RPC, SMB, NetBIOS, Cluster service, AD, KDC incl. kpasswd, DNS)
WINDOWS_PORTS = (
    "https://learn.microsoft.com/en-us/troubleshoot/windows-server/networking/"
    "service-overview-and-network-port-requirements"
)
#: no Microsoft page: Exchange setup's own Windows Firewall rules (decompiled; exchange-reference.md §1.1, §3)
SETUP_FIREWALL_RULES = "exchange-reference.md §3 (Exchange setup's Windows Firewall rules, decompiled)"


@dataclass(frozen=True, slots=True)
class PortEntry:
    """One row: a port that targets of this kind, product and role serve."""

    kind: PathKind
    port: int
    proto: str  # "tcp" | "udp"
    service: str  # bounded label value
    check: str  # the probe that proves it: "tcp" (connect) or a protocol check name
    products: frozenset[Product] = ALL_PRODUCTS
    roles: frozenset[Role] | str = ANY_INTERNAL  # target needs one of these roles, or DC / GC / WITNESS
    with_roles: frozenset[Role] = frozenset()  # ... and every one of these too (2525 needs the front end)
    dag_only: bool = False  # only on DAG members
    optional: bool = False  # disabled by default in Exchange (POP/IMAP): probed only when enabled
    advisory: bool = False  # no page says every such server listens: reported, never required
    note: str = ""
    source: str = ""  # the page (URL) this row was verified against

    @property
    def required(self) -> bool:
        return self.kind in REQUIRED_KINDS and not self.advisory


XX = PathKind.EXCHANGE_EXCHANGE
XD = PathKind.EXCHANGE_DC
CX = PathKind.CLIENT_EXCHANGE
ED = PathKind.EDGE

CATALOGUE: tuple[PortEntry, ...] = (
    # ---- Exchange <-> Exchange: what traffic actually uses (the policy is ANY/ANY, PORTS_2016) ----
    # SMTP. 2010: only Hub Transport runs SMTP (Hub<->Hub, Edge->Hub, UM->Hub on 25; Mailbox<->Hub is RPC).
    PortEntry(
        XX,
        25,
        "tcp",
        "smtp",
        "smtp",
        products=P2010,
        roles=HUB,
        note="Hub Transport Default <server>",
        source=PORTS_2010,
    ),
    # 2013+: the front end's FET "Default Frontend" on 25; a standalone 2013 Mailbox's Transport service
    # listens on 25 itself ("Default <server>"), a multi-role 2013 or any 2016+ Mailbox's on 2525.
    PortEntry(
        XX,
        25,
        "tcp",
        "smtp",
        "smtp",
        products=P2013_UP,
        roles=SMTP_2013_UP,
        note="FET Default Frontend; standalone 2013 Mailbox: Transport Default <server>",
        source=PORTS_2013,
    ),
    PortEntry(
        XX,
        2525,
        "tcp",
        "smtp-transport",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        with_roles=CAS,
        note="Transport Default <server>, moved off 25 only where FET holds 25 on the same server",
        source=RECEIVE_CONNECTORS,
    ),
    PortEntry(
        XX,
        465,
        "tcp",
        "smtp-clientproxy",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        note="Transport Client Proxy <server> (plain SMTP + STARTTLS)",
        source=RECEIVE_CONNECTORS,
    ),
    PortEntry(
        XX,
        475,
        "tcp",
        "smtp-delivery",
        "smtp",
        products=P2013_UP,
        roles=MBX,
        note="Mailbox Transport Delivery (implicit receive connector)",
        source=RECEIVE_CONNECTORS,
    ),
    PortEntry(
        XX,
        587,
        "tcp",
        "smtp-submission",
        "smtp",
        products=P2010,
        roles=HUB,
        note="Hub Transport Client <server>",
        source=RECEIVE_CONNECTORS_2010,
    ),
    PortEntry(
        XX,
        587,
        "tcp",
        "smtp-submission",
        "smtp",
        products=P2013_UP,
        roles=FRONT_END,
        note="FET Client Frontend <server>",
        source=PORTS_2013,
    ),
    PortEntry(
        XX,
        717,
        "tcp",
        "smtp-outproxy",
        "smtp",
        products=P2013_UP,
        roles=FRONT_END,
        note="FET Outbound Proxy Frontend <server>",
        source=PORTS_2013,
    ),
    # HTTP
    PortEntry(
        XX,
        80,
        "tcp",
        "http",
        "tcp",
        note="Remote PowerShell http://<server>/PowerShell (Kerberos)",
        source=REMOTE_POWERSHELL,
    ),
    PortEntry(
        XX,
        443,
        "tcp",
        "https",
        "tcp",
        products=P2010,
        roles=CAS,
        note="Client Access: cross-site proxy and redirect",
        source=CLIENT_ACCESS_2010,
    ),
    PortEntry(
        XX,
        443,
        "tcp",
        "https",
        "https-health",
        products=P2013_UP,
        roles=FRONT_END,
        note="front end (CAFE): its healthcheck.htm pages",
        source=PORTS_2013,
    ),
    PortEntry(
        XX,
        444,
        "tcp",
        "https-backend",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        note="Exchange Back End site: the front end proxies every HTTP protocol here",
        source=BACK_END_444,
    ),
    PortEntry(
        XX,
        81,
        "tcp",
        "http-backend",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        note="Exchange Back End site, HTTP binding",
        source=BACK_END_81,
    ),
    # RPC, SMB, NetBIOS (Windows)
    PortEntry(
        XX,
        135,
        "tcp",
        "rpc-epm",
        "rpc-epm",
        note="RPC endpoint mapper; dynamic ports follow",
        source=WINDOWS_PORTS,
    ),
    PortEntry(XX, 445, "tcp", "smb", "smb", note="SMB", source=WINDOWS_PORTS),
    PortEntry(
        XX,
        139,
        "tcp",
        "netbios-ssn",
        "tcp",
        products=P2013_UP,
        advisory=True,
        note="setup's 'MSExchange CAS' rule; NetBIOS is optional and often disabled",
        source=WINDOWS_PORTS,
    ),
    # Mailbox Replication service: on Client Access in 2010, in the back end (Mailbox) from 2013.
    PortEntry(
        XX,
        808,
        "tcp",
        "mrs",
        "tcp",
        products=P2010,
        roles=CAS,
        note="Mailbox Replication service (port: setup's MSExchangeMailboxReplication rule)",
        source=MRS,
    ),
    PortEntry(
        XX,
        808,
        "tcp",
        "mrs",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        note="Mailbox Replication service (port: setup's MSExchangeMailboxReplication rule)",
        source=MRS,
    ),
    # DAG members: failover cluster and replication
    PortEntry(
        XX,
        3343,
        "tcp",
        "cluster",
        "tcp",
        roles=MBX,
        dag_only=True,
        note="Cluster service (node join); the UDP 3343 heartbeat needs a probe this build lacks",
        source=WINDOWS_PORTS,
    ),
    PortEntry(
        XX,
        64327,
        "tcp",
        "dag-replication",
        "tcp",
        roles=MBX,
        dag_only=True,
        note="DAG log copy and seeding; the DAG's msExchMDBAvailabilityGroupReplicationPort",
        source=DAG_REPLICATION,
    ),
    PortEntry(
        XX,
        64337,
        "tcp",
        "ha-webservice",
        "tcp",
        products=P2013_UP,
        roles=MBX,
        advisory=True,
        note="setup's 'MSExchangeRepl - High Availability Web Service' rule; no page documents a listener",
        source=SETUP_FIREWALL_RULES,
    ),
    PortEntry(
        XX,
        445,
        "tcp",
        "smb-witness",
        "smb",
        roles=WITNESS,
        note="DAG members lock witness.log on the file share witness over SMB",
        source=DAG_WITNESS,
    ),
    # Unified Messaging (2013, 2016): the UM service is on Mailbox; Client Access runs only the call router.
    PortEntry(
        XX,
        5062,
        "tcp",
        "um-sip",
        "tcp",
        products=P_UM,
        roles=MBX,
        note="UM service SIP",
        source=UM_PORTS,
    ),
    PortEntry(
        XX,
        5063,
        "tcp",
        "um-sips",
        "tcp",
        products=P_UM,
        roles=MBX,
        note="UM service SIP/TLS",
        source=UM_PORTS,
    ),
    PortEntry(
        XX,
        6001,
        "tcp",
        "rpc-http-store",
        "tcp",
        products=P2010,
        roles=frozenset({Role.MAILBOX, Role.CLIENT_ACCESS}),
        note="Outlook Anywhere back end (RPC Client Access, public folder store)",
        source=SETUP_FIREWALL_RULES,
    ),
    # ---- Exchange -> domain controllers (KB 832017; the 2010 port reference) ----
    PortEntry(XD, 53, "tcp", "dns", "dns-tcp", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 53, "udp", "dns", "dns", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 88, "tcp", "kerberos", "kerberos-tcp", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 88, "udp", "kerberos", "kerberos", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 123, "udp", "ntp", "ntp", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 135, "tcp", "rpc-epm", "rpc-epm", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 389, "tcp", "ldap", "ldap-rootdse", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 389, "udp", "cldap", "cldap", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 445, "tcp", "smb", "smb", roles=DC, source=WINDOWS_PORTS),
    # kpasswd: 464/tcp as a connect; 464/udp is left out: only a kpasswd (RFC 3244) answer would prove it,
    # and this build has no such probe (a bare UDP send proves nothing).
    PortEntry(XD, 464, "tcp", "kpasswd", "tcp", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 636, "tcp", "ldaps", "ldaps", roles=DC, source=WINDOWS_PORTS),
    PortEntry(XD, 3268, "tcp", "gc", "gc", roles=GC, source=WINDOWS_PORTS),
    PortEntry(XD, 3269, "tcp", "gc-ssl", "gc-ssl", roles=GC, source=WINDOWS_PORTS),
    # ---- clients -> Client Access (2010 CAS, the 2013 front end, every 2016+ Mailbox) ----
    PortEntry(
        CX,
        80,
        "tcp",
        "http",
        "tcp",
        roles=CAS,
        note="OWA redirect, Autodiscover fallback",
        source=PORTS_2013,
    ),
    PortEntry(
        CX,
        443,
        "tcp",
        "https",
        "https-health",
        products=P2013_UP,
        roles=CAS,
        note="Autodiscover, EWS, OWA, ECP, EAS, OAB, MAPI/HTTP, RPC/HTTP: the healthcheck.htm pages",
        source=PORTS_2013,
    ),
    PortEntry(
        CX,
        443,
        "tcp",
        "https",
        "tcp",
        products=P2010,
        roles=CAS,
        note="2010 has no health pages",
        source=CLIENT_ACCESS_2010,
    ),
    PortEntry(
        CX,
        587,
        "tcp",
        "smtp-submission",
        "smtp",
        products=P2013_UP,
        roles=FRONT_END,
        note="FET Client Frontend <server>",
        source=PORTS_2013,
    ),
    PortEntry(
        CX,
        587,
        "tcp",
        "smtp-submission",
        "smtp",
        products=P2010,
        roles=HUB,
        note="Hub Transport Client <server>",
        source=RECEIVE_CONNECTORS_2010,
    ),
    PortEntry(
        CX,
        135,
        "tcp",
        "rpc-epm",
        "rpc-epm",
        products=P2010,
        roles=CAS,
        note="Outlook RPC/TCP (2010 only) resolves EMSMDB/NSPI on Client Access",
        source=ADDRESS_BOOK_2010,
    ),
    PortEntry(CX, 110, "tcp", "pop3", "tcp", roles=CAS, optional=True, source=PORTS_2013),
    PortEntry(CX, 995, "tcp", "pop3s", "tcp", roles=CAS, optional=True, source=PORTS_2013),
    PortEntry(CX, 143, "tcp", "imap", "tcp", roles=CAS, optional=True, source=PORTS_2013),
    PortEntry(CX, 993, "tcp", "imaps", "tcp", roles=CAS, optional=True, source=PORTS_2013),
    PortEntry(
        CX,
        5060,
        "tcp",
        "um-callrouter-sip",
        "tcp",
        products=P_UM,
        roles=CAS,
        optional=True,
        note="UM Call Router (Client Access)",
        source=UM_PORTS,
    ),
    PortEntry(
        CX,
        5061,
        "tcp",
        "um-callrouter-sips",
        "tcp",
        products=P_UM,
        roles=CAS,
        optional=True,
        note="UM Call Router (Client Access)",
        source=UM_PORTS,
    ),
    # ---- Edge Transport (perimeter: filtering allowed, only these are documented) ----
    # The planner keeps these to the Edge subscription's AD site (the Edge's own site in the inventory).
    PortEntry(
        ED,
        25,
        "tcp",
        "smtp",
        "smtp",
        roles=EDGE,
        note="Default internal Receive connector: from Hub Transport (2010) / Mailbox (2013+)",
        source=PORTS_2016,
    ),
    PortEntry(
        ED,
        50636,
        "tcp",
        "edgesync",
        "tcp",
        roles=EDGE,
        note="EdgeSync: AD LDS over LDAPS",
        source=PORTS_2016,
    ),
    # Edge -> the organisation: 2010 Hub Transport (PORTS_2010); from 2013 the Mailbox servers of the
    # subscribed site (PORTS_2013, PORTS_2016): HUB after the planner's folding says exactly that.
    PortEntry(
        ED,
        25,
        "tcp",
        "smtp",
        "smtp",
        roles=HUB,
        note="EdgeSync - Inbound to <site>: Hub Transport (2010) / Mailbox (2013+)",
        source=PORTS_2013,
    ),
)

#: the roles that send to an Edge server (2010 Hub Transport, the Transport service of a 2013+ Mailbox)
EDGE_SENDERS = HUB

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
