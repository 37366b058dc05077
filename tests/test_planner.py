"""The planner with nothing but an inventory: who probes which port of whom, and what counts."""

from __future__ import annotations

from collections import Counter

import yaml

from exporter.inventory.model import Role
from exporter.inventory.static import parse_inventory
from exporter.plan.catalogue import CATALOGUE, CHECKS, PathKind
from exporter.plan.planner import NetworkPath, Vantage, dynamic_rpc_paths, plan, roles_of
from exporter.probes import registry
from tests.lab.organisations import GOOD

INV = parse_inventory(yaml.safe_load(GOOD))
TCP = frozenset({"tcp"})


def ports(paths: list[NetworkPath], target: str) -> set[tuple[int, str]]:
    return {(p.port, p.proto) for p in paths if p.target == target}


def test_observer_probes_every_members_server_side_ports() -> None:
    paths = plan(INV, "monitor.contoso.test", connect_only=True)
    assert {p.source_site for p in paths} == {""}
    # Exchange 2019 Mailbox in a DAG: the full internal set incl. DAG ports at the DAG's own port
    assert {port for port, _ in ports(paths, "ex01.contoso.test")} == {
        25,
        80,
        135,
        139,
        443,
        444,
        445,
        465,
        475,
        587,
        717,
        808,
        2525,
        3343,
        64337,
        64400,
        81,
    }
    # a global catalog answers 3268/3269, a read-only DC that is not a GC does not
    assert {port for port, _ in ports(paths, "dc1.contoso.test")} == {
        53,
        88,
        135,
        389,
        445,
        464,
        636,
        3268,
        3269,
    }
    assert {port for port, _ in ports(paths, "rodc1.contoso.test")} == {53, 88, 135, 389, 445, 464, 636}


def test_edge_gets_only_its_documented_paths_and_never_counts() -> None:
    for source in ("monitor.contoso.test", "ex01.contoso.test"):
        edge = [p for p in plan(INV, source) if p.target == "edge1.dmz.test"]
        assert {(p.port, p.kind) for p in edge} == {(25, PathKind.EDGE), (50636, PathKind.EDGE)}
        assert not any(p.required for p in edge)


def test_exchange_member_probes_exchange_and_dcs_but_not_itself_nor_client_ports() -> None:
    paths = plan(INV, "ex01.contoso.test", connect_only=True)
    assert all(p.source == "ex01.contoso.test" and p.source_site == "HQ" for p in paths)
    assert "ex01.contoso.test" not in {p.target for p in paths}
    assert {p.kind for p in paths} == {PathKind.EXCHANGE_EXCHANGE, PathKind.EXCHANGE_DC, PathKind.EDGE}
    assert all(p.required for p in paths if p.kind is not PathKind.EDGE)
    # Exchange 2010 CAS+Hub: the 2010 rows only; its static RPC ports are client paths, not planned here
    assert {port for port, _ in ports(paths, "ex10.contoso.test")} == {25, 80, 135, 443, 445, 587, 808, 6001}


def test_edge_member_probes_only_smtp_to_mailbox_servers() -> None:
    paths = plan(INV, "edge1.dmz.test")
    assert {(p.target, p.port, p.kind) for p in paths} == {("ex01.contoso.test", 25, PathKind.EDGE)}


def test_dc_member_probes_rpc_and_smb_on_exchange_servers_only() -> None:
    paths = plan(INV, "DC1")
    assert {(p.target, p.port) for p in paths} == {
        ("ex01.contoso.test", 135),
        ("ex01.contoso.test", 445),
        ("ex10.contoso.test", 135),
        ("ex10.contoso.test", 445),
    }
    assert all(p.kind is PathKind.EXCHANGE_DC and p.required for p in paths)


def test_client_vantage_probes_client_endpoints_including_2010_static_rpc_ports() -> None:
    paths = plan(INV, "client-zone-1", vantage=Vantage.CLIENT)
    assert {(p.target, p.port, p.service) for p in paths} == {
        ("ex01.contoso.test", 80, "http"),
        ("ex01.contoso.test", 443, "https"),
        ("ex01.contoso.test", 587, "smtp-submission"),
        ("ex10.contoso.test", 80, "http"),
        ("ex10.contoso.test", 443, "https"),
        ("ex10.contoso.test", 587, "smtp-submission"),
        ("ex10.contoso.test", 135, "rpc-epm"),
        ("ex10.contoso.test", 59531, "rpc-static-rca"),
        ("ex10.contoso.test", 59532, "rpc-static-ab"),
    }
    assert not any(p.required for p in paths)


def test_optional_client_services_only_when_enabled() -> None:
    without = plan(INV, "c", vantage=Vantage.CLIENT)
    with_imap = plan(INV, "c", vantage=Vantage.CLIENT, optional_services=frozenset({"imaps"}))
    assert {p.port for p in with_imap} - {p.port for p in without} == {993}


def test_one_path_per_port_keeping_the_kind_that_matters_most() -> None:
    paths = plan(INV, "monitor.contoso.test")
    counts = Counter((p.target, p.port, p.proto, p.check) for p in paths)
    assert max(counts.values()) == 1
    https = next(p for p in paths if p.target == "ex01.contoso.test" and p.port == 443)
    assert https.kind is PathKind.EXCHANGE_EXCHANGE  # not client-exchange


def test_udp_checks_are_planned_only_when_the_build_can_run_them() -> None:
    every = plan(INV, "ex01.contoso.test")
    assert {(p.port, p.check) for p in every if p.proto == "udp" and p.target == "dc1.contoso.test"} == {
        (53, "dns"),
        (88, "kerberos"),
        (123, "ntp"),
        (389, "cldap"),
    }
    assert not [p for p in plan(INV, "ex01.contoso.test", checks=TCP) if p.proto == "udp"]


def test_um_ports_exist_for_2016_but_not_2019_or_se() -> None:
    inv = parse_inventory(
        {
            "organisation": "o",
            "servers": [
                {"name": n, "fqdn": f"{n}.t", "roles": ["mailbox"], "version": v, "site": "s"}
                for n, v in (("a", "2016"), ("b", "2019"), ("c", "SE"))
            ],
        }
    )
    paths = plan(inv, "observer")
    assert {p.target for p in paths if p.port in (5062, 5063)} == {"a.t"}


def test_catalogue_rows_are_well_formed() -> None:
    for row in CATALOGUE:
        assert 0 < row.port < 65536 and row.proto in ("tcp", "udp")
        assert row.service == row.service.lower() and " " not in row.service
        assert row.proto == "tcp" or row.check != "tcp"  # a UDP port is only proven by a protocol answer
        assert row.source, f"{row.port}/{row.proto} {row.service} names no source"
        assert not (row.advisory and row.kind not in (PathKind.EXCHANGE_EXCHANGE, PathKind.EXCHANGE_DC))
    assert {"tcp", *registry.CHECKS} >= CHECKS  # every check the catalogue names exists in this build


def test_protocol_checks_are_planned_where_they_prove_more_than_a_connect() -> None:
    paths = {(p.target, p.port, p.proto): p.check for p in plan(INV, "ex01.contoso.test")}
    assert paths[("dc1.contoso.test", 389, "tcp")] == "ldap-rootdse"
    assert paths[("dc1.contoso.test", 3269, "tcp")] == "gc-ssl"
    assert paths[("dc1.contoso.test", 135, "tcp")] == "rpc-epm"
    assert paths[("dc1.contoso.test", 88, "udp")] == "kerberos"
    assert paths[("ex10.contoso.test", 25, "tcp")] == "smtp"
    assert paths[("ex10.contoso.test", 443, "tcp")] == "tcp"  # 2010 has no health pages
    observer = {(p.target, p.port): p.check for p in plan(INV, "monitor.contoso.test")}
    assert observer[("ex01.contoso.test", 443)] == "https-health"
    assert observer[("edge1.dmz.test", 25)] == "smtp" and observer[("edge1.dmz.test", 50636)] == "tcp"


# ---- the catalogue per product and role ------------------------------------------------------------------
# One organisation with a server of every product x role layout, all in site S, plus the agent SRC (a 2019
# Mailbox outside any DAG). Each set below is exactly what the catalogue says that target listens on.
LAYOUTS = {
    "h10": ("2010", ["hubtransport"]),
    "c10": ("2010", ["clientaccess"]),
    "m10": ("2010", ["mailbox"]),
    "a10": ("2010", ["mailbox", "clientaccess", "hubtransport"]),
    "c13": ("2013", ["clientaccess"]),
    "m13": ("2013", ["mailbox"]),
    "a13": ("2013", ["mailbox", "clientaccess"]),
    "x16": ("2016", ["mailbox"]),
    "x19": ("2019", ["mailbox"]),
    "xse": ("SE", ["mailbox"]),
    "edge": ("SE", ["edge"]),
}
LAYOUT_INV = parse_inventory(
    {
        "organisation": "o",
        "servers": [
            {"name": name, "fqdn": f"{name}.t", "roles": roles, "version": version, "site": "S"}
            for name, (version, roles) in {**LAYOUTS, "src": ("2019", ["mailbox"])}.items()
        ],
    }
)
WINDOWS = {80, 135, 445}  # remote PowerShell, RPC endpoint mapper, SMB: every internal Exchange server
BACK_END_2013 = {25, 81, 444, 465, 475, 808}  # the 2013 back end (a standalone Mailbox's Transport on 25)
FRONT_END_2013 = {25, 443, 587, 717}  # the 2013 front end: CAFE, FET
ADVISORY = {139, 64337}


def exchange_ports(target: str) -> tuple[set[int], set[int]]:
    """(required, advisory) ports another Exchange server probes on `target`."""
    paths = [p for p in plan(LAYOUT_INV, "src.t", connect_only=True) if p.target == target]
    return {p.port for p in paths if p.required}, {p.port for p in paths if not p.required}


def client_ports(target: str, optional: frozenset[str] = frozenset()) -> set[int]:
    return {
        p.port
        for p in plan(LAYOUT_INV, "c", vantage=Vantage.CLIENT, optional_services=optional)
        if p.target == target
    }


def test_exchange_2010_roles_apart_and_together() -> None:
    # only Hub Transport runs SMTP; MRS and Outlook Anywhere's back end live on Client Access
    assert exchange_ports("h10.t") == (WINDOWS | {25, 587}, set())
    assert exchange_ports("c10.t") == (WINDOWS | {443, 808, 6001}, set())
    assert exchange_ports("m10.t") == (WINDOWS | {6001}, set())
    assert exchange_ports("a10.t") == (WINDOWS | {25, 443, 587, 808, 6001}, set())
    assert client_ports("h10.t") == {587}
    assert client_ports("c10.t") == {80, 135, 443}
    assert client_ports("m10.t") == set()
    assert client_ports("a10.t", frozenset({"imaps", "pop3s"})) == {80, 135, 443, 587, 993, 995}


def test_exchange_2013_client_access_and_mailbox_apart_and_together() -> None:
    # Client Access: CAFE and FET only (no MRS, no UM service, no back end)
    assert exchange_ports("c13.t") == (WINDOWS | FRONT_END_2013, {139})
    # a standalone Mailbox: its Transport service listens on 25 (not 2525); no 587/717, the UM service
    assert exchange_ports("m13.t") == (WINDOWS | BACK_END_2013 | {5062, 5063}, ADVISORY)
    # together: FET holds 25, so Transport moves to 2525
    assert exchange_ports("a13.t") == (
        WINDOWS | FRONT_END_2013 | BACK_END_2013 | {2525, 5062, 5063},
        ADVISORY,
    )
    assert client_ports("c13.t", frozenset({"um-callrouter-sip"})) == {80, 443, 587, 5060}
    assert client_ports("m13.t", frozenset({"um-callrouter-sip", "imap"})) == set()
    assert client_ports("a13.t") == {80, 443, 587}


def test_exchange_2016_2019_and_se_mailbox() -> None:
    everything = WINDOWS | FRONT_END_2013 | BACK_END_2013 | {2525}
    assert exchange_ports("x16.t") == (everything | {5062, 5063}, ADVISORY)  # UM lives on until 2016
    assert exchange_ports("x19.t") == (everything, ADVISORY)
    assert exchange_ports("xse.t") == (everything, ADVISORY)
    assert client_ports("x16.t", frozenset({"um-callrouter-sip"})) == {80, 443, 587, 5060}
    assert client_ports("x19.t", frozenset({"um-callrouter-sip"})) == {80, 443, 587}
    assert client_ports("xse.t") == {80, 443, 587}


def test_dag_members_add_the_cluster_and_replication_ports() -> None:
    inv = parse_inventory(
        {
            "organisation": "o",
            "servers": [
                {
                    "name": "a",
                    "fqdn": "a.t",
                    "roles": ["mailbox"],
                    "version": "2010",
                    "site": "S",
                    "dag": "D",
                },
                {"name": "b", "fqdn": "b.t", "roles": ["mailbox"], "version": "SE", "site": "S", "dag": "D"},
            ],
        }
    )
    assert {p.port for p in plan(inv, "b.t") if p.target == "a.t"} == WINDOWS | {6001, 3343, 64327}
    assert {p.port for p in plan(inv, "a.t") if p.target == "b.t"} - exchange_ports("xse.t")[
        0
    ] - ADVISORY == {
        3343,
        64327,
    }


def test_edge_gets_only_25_and_50636_and_never_counts() -> None:
    edge = [p for p in plan(LAYOUT_INV, "monitor") if p.target == "edge.t"]
    assert {(p.port, p.kind, p.required) for p in edge} == {
        (25, PathKind.EDGE, False),
        (50636, PathKind.EDGE, False),
    }


def test_edge_delivers_to_2010_hub_transport_and_2013_up_mailbox_of_its_own_site() -> None:
    inv = parse_inventory(
        {
            "organisation": "o",
            "servers": [
                *(
                    {
                        "name": n,
                        "fqdn": f"{n}.t",
                        "roles": LAYOUTS[n][1],
                        "version": LAYOUTS[n][0],
                        "site": "S",
                    }
                    for n in LAYOUTS
                ),
                {"name": "far", "fqdn": "far.t", "roles": ["mailbox"], "version": "SE", "site": "Other"},
            ],
        }
    )
    inward = plan(inv, "edge.t")
    assert {(p.port, p.kind) for p in inward} == {(25, PathKind.EDGE)}
    assert {p.target for p in inward} == {"h10.t", "a10.t", "m13.t", "a13.t", "x16.t", "x19.t", "xse.t"}
    # and only those senders (2010 Hub Transport, 2013+ Mailbox of the subscribed site) probe the Edge
    senders = {n for n in [*LAYOUTS, "far"] if any(p.target == "edge.t" for p in plan(inv, f"{n}.t"))}
    assert senders == {"h10", "a10", "m13", "a13", "x16", "x19", "xse"}
    assert {p.port for p in plan(inv, "m13.t") if p.target == "edge.t"} == {25, 50636}


def test_unconfirmed_listeners_are_reported_but_never_required() -> None:
    # 139 (NetBIOS is optional) and 64337 (only a firewall rule names it): no Microsoft page says every
    # such server listens there, so a silent one must not make the organisation non-compliant
    paths = [p for p in plan(LAYOUT_INV, "src.t") if p.port in ADVISORY]
    assert paths and all(p.advisory and p.judged and not p.required for p in paths)
    assert {p.kind for p in paths} == {PathKind.EXCHANGE_EXCHANGE}


def test_roles_of_folds_each_products_layout() -> None:
    by_name = {s.name: s for s in LAYOUT_INV.servers}
    front, back = {Role.CLIENT_ACCESS, Role.FRONTEND_TRANSPORT}, {Role.MAILBOX, Role.HUB_TRANSPORT}
    assert roles_of(by_name["c10"]) == {Role.CLIENT_ACCESS}  # 2010: as it is
    assert roles_of(by_name["c13"]) == front
    assert roles_of(by_name["m13"]) == back
    assert roles_of(by_name["x19"]) == front | back
    assert roles_of(by_name["x16"]) == front | back | {Role.UM}


def test_file_share_witness_is_probed_by_its_dags_members_and_observers() -> None:
    inv = parse_inventory(
        {
            "organisation": "o",
            "servers": [
                {
                    "name": "a",
                    "fqdn": "a.t",
                    "roles": ["mailbox"],
                    "version": "2019",
                    "site": "S",
                    "dag": "D1",
                },
                {
                    "name": "b",
                    "fqdn": "b.t",
                    "roles": ["mailbox"],
                    "version": "2019",
                    "site": "S",
                    "dag": "D2",
                },
                {"name": "c", "fqdn": "c.t", "roles": ["mailbox"], "version": "2019", "site": "S"},
            ],
        }
    )
    witnesses = {"D1": "fsw1.t", "D2": "c.t"}  # D2's witness is an Exchange server of the inventory
    member = [p for p in plan(inv, "a.t", witnesses=witnesses) if p.target == "fsw1.t"]
    assert [(p.port, p.service, p.check, p.kind, p.target_role, p.required) for p in member] == [
        (445, "smb-witness", "smb", PathKind.EXCHANGE_EXCHANGE, "witness", True)
    ]
    assert not [p for p in plan(inv, "c.t", witnesses=witnesses) if p.target == "fsw1.t"]  # not D1's member
    assert {p.target for p in plan(inv, "monitor", witnesses=witnesses) if p.port == 445} == {
        "a.t",
        "b.t",
        "c.t",
        "fsw1.t",
    }
    on_c = [p for p in plan(inv, "b.t", witnesses=witnesses) if p.target == "c.t" and p.port == 445]
    assert len(on_c) == 1 and on_c[0].target_role == "mailbox"  # one path per port, the member's own facts
    client = plan(inv, "c", vantage=Vantage.CLIENT, witnesses=witnesses)
    assert "fsw1.t" not in {p.target for p in client}  # a client zone has no business with the witness


# ---- every address, both families ---------------------------------------------------------------------


def test_a_dual_stack_target_is_a_path_per_family_and_a_replication_network_one_per_address() -> None:
    from exporter.inventory.model import Inventory, Server, Version

    def server(name: str, address: str | None, *more: str) -> Server:
        return Server(
            name,
            f"{name.lower()}.corp.example",
            frozenset({Role.MAILBOX}),
            Version.parse("2019"),
            "HQ",
            address=address,
            addresses=more,
        )

    inventory = Inventory(
        "Dual",
        servers=(
            server("EX1", None),
            server("EX2", "10.1.0.12", "fd00::12", "10.2.0.12"),  # IPv6 and a DAG replication network
            server("EX3", None),
        ),
    )
    paths = plan(inventory, "ex1.corp.example", families={"ex3.corp.example": frozenset({"ipv4", "ipv6"})})
    smb = {(p.target, p.family, p.address, p.endpoint) for p in paths if p.port == 445}
    assert smb == {
        ("ex2.corp.example", "ipv4", "10.1.0.12", ""),
        ("ex2.corp.example", "ipv6", "fd00::12", ""),
        ("ex2.corp.example", "ipv4", "10.2.0.12", "10.2.0.12"),
        ("ex3.corp.example", "ipv4", None, ""),  # by name: resolved within the family at probe time
        ("ex3.corp.example", "ipv6", None, ""),
    }
    # each is a path of its own (its own key, so its own baseline record and series) ...
    assert len({p.key for p in paths}) == len(paths)
    # ... and an IPv4 path keeps the key it had before families were planned
    (v4,) = [p for p in paths if p.port == 445 and p.address == "10.1.0.12"]
    assert v4.key == ("ex1.corp.example", "ex2.corp.example", 445, "tcp", "smb")
    # without resolution (a name that did not resolve at planning) one path, resolved at probe time
    unplanned = [p for p in plan(inventory, "ex1.corp.example") if p.target == "ex3.corp.example"]
    assert {p.family for p in unplanned} == {""}


def test_a_dynamic_port_listed_under_several_interfaces_is_one_path() -> None:
    """A path's key has no service: two interfaces on one port would be one record twice."""
    mapper = NetworkPath(
        "ex1", "HQ", "ex2", "HQ", "mailbox", 135, "tcp", "rpc-epm", PathKind.EXCHANGE_EXCHANGE, "rpc-epm"
    )
    found = dynamic_rpc_paths(mapper, [("nspi", 6004), ("rfr", 6004), ("drsuapi", 49152), ("bad", 0)])
    assert [(p.service, p.port, p.check) for p in found] == [
        ("rpc:drsuapi", 49152, "tcp"),
        ("rpc:nspi", 6004, "tcp"),
    ]
    assert len({p.key for p in found}) == len(found)
