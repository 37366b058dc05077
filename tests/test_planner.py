"""The planner with nothing but an inventory: who probes which port of whom, and what counts."""

from __future__ import annotations

from collections import Counter

import yaml

from exporter.inventory.static import parse_inventory
from exporter.plan.catalogue import CATALOGUE, CHECKS, PathKind
from exporter.plan.planner import NetworkPath, Vantage, plan
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
