"""AD discovery against a real Samba AD DC holding an Exchange organisation (tests/lab/samba.py).

The lab: forest lab.example.test, DC1 on 127.0.77.1 (site HQ, GC), DC2 and RODC1 as directory objects in
site Branch, organisation "Contoso Lab" with 2016/2019/SE/Edge servers, two DAGs, transport child objects,
and one object per malformed case. A relaxed copy of DC1 on 127.0.77.2 accepts simple binds on plain LDAP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.commands.discover import run_discover
from exporter.errors import ConfigError
from exporter.flags import add_discover_arguments
from exporter.inventory.dns_srv import LocatedDc, locate_dcs, parse_nameserver
from exporter.inventory.exchange_attributes import decode_roles, version_from_number, version_from_serial
from exporter.inventory.ldap import (
    SERVER_FILTER,
    DiscoveryResult,
    EndpointFailure,
    LdapDiscoveryError,
    Reason,
    discover,
)
from exporter.inventory.ldap_settings import LdapSettings, Secret, read_password
from exporter.inventory.model import DomainController, Inventory, Product, Role, Server, Version
from exporter.inventory.sources import DirectorySource, InventoryWatcher
from exporter.inventory.static import load_inventory
from tests.lab import samba
from tests.lab.samba import LAB_IP, RELAXED_IP, SambaDC, SambaLab
from tests.lab.service import serve_args, start_service

# ---- the lab, once per session -------------------------------------------------------------------


# samba_lab and relaxed_dc are session fixtures in tests/conftest.py (the protocol probes use them too)


@pytest.fixture
def closed_port(samba_lab: SambaLab) -> Iterator[int]:
    """A port on the lab address that is bound but not listening: connecting gets a RST."""
    with socket.socket() as sock:
        sock.bind((LAB_IP, 0))
        yield int(sock.getsockname()[1])


def lab_settings(lab: SambaLab, **changes: Any) -> LdapSettings:
    base = LdapSettings(
        urls=(f"ldaps://{LAB_IP}",),
        bind_user=samba.ADMIN_UPN,
        password=Secret(samba.ADMIN_PASSWORD),
        ca_file=str(lab.certificates.ca),
        timeout=5,
    )
    return dataclasses.replace(base, **changes)


# ---- what the directory holds, written out by hand -----------------------------------------------
MAILBOX_2019 = frozenset({Role.CLIENT_ACCESS, Role.MAILBOX, Role.HUB_TRANSPORT, Role.FRONTEND_TRANSPORT})
V2019_CU14 = Version(Product.EX2019, (15, 2, 1544, 4))

EXPECTED_SERVERS = (
    Server("EDGE01", "edge01.perimeter.example.test", frozenset({Role.EDGE}), V2019_CU14, "HQ"),
    Server("EX-BADADDR", "ex-badaddr.lab.example.test", MAILBOX_2019, V2019_CU14, "HQ"),
    Server(
        "EX-NOSERIAL",
        "ex-noserial.lab.example.test",
        MAILBOX_2019,
        Version(Product.EX2019, (15, 2, 1258)),
        "Branch",
    ),
    Server("EX-NOSITE", "ex-nosite.lab.example.test", MAILBOX_2019, V2019_CU14, "unknown"),
    Server("EX-ODDROLES", "ex-oddroles.lab.example.test", MAILBOX_2019, V2019_CU14, "HQ"),
    Server(
        "EX2016-01",
        "ex2016-01.lab.example.test",
        MAILBOX_2019 | {Role.UM},
        Version(Product.EX2016, (15, 1, 2507, 6)),
        "HQ",
        dag="DAG01",
        dag_replication_port=64400,
    ),
    Server(
        "EX2019-01",
        "ex2019-01.lab.example.test",
        MAILBOX_2019,
        Version(Product.EX2019, (15, 2, 1118, 7)),
        "HQ",
        dag="DAG01",
        dag_replication_port=64400,
    ),
    Server(
        "EXSE-01",
        "exse-01.lab.example.test",
        MAILBOX_2019,
        Version(Product.SE, (15, 2, 2562, 17)),
        "Branch",
        dag="DAG02",
        dag_replication_port=64327,
    ),
)
EXPECTED_DCS = (
    DomainController("DC1", "dc1.lab.example.test", "HQ", global_catalog=True, read_only=False),
    DomainController("DC2", "dc2.lab.example.test", "Branch", global_catalog=False, read_only=False),
    DomainController("RODC1", "rodc1.lab.example.test", "Branch", global_catalog=True, read_only=True),
)
EXPECTED_SITES = {"Branch": ["10.20.0.0/16"], "HQ": ["10.1.0.0/16", "10.2.0.0/24"]}


def server_dn(name: str, group: str = samba.AG_DN) -> str:
    return f"CN={name},CN=Servers,{group}"


EXPECTED_WARNINGS = (
    f"{server_dn('EX-BADADDR')}: networkAddress 'ncacn_ip_tcp:!!not a host name!!' is not a DNS name; "
    "FQDN ex-badaddr.lab.example.test taken from the computer object's dNSHostName",
    f"{server_dn('EX-NOSERIAL')}: no serialNumber; version 15.2.1258 (2019) taken from versionNumber",
    f"{server_dn('EX-NOSITE')}: no msExchServerSite; site set to 'unknown'",
    f"{server_dn('EX-NOVERSION')}: skipped: serialNumber 'garbage' is not 'Version X.Y (Build N.R)' "
    "and no versionNumber",
    f"{server_dn('EX-ODDROLES')}: unknown bits 0x100000 in msExchCurrentServerRoles 1064999; kept the known "
    "roles (clientaccess, frontendtransport, hubtransport, mailbox)",
    f"{server_dn('EX-PROVISIONED')}: skipped: msExchCurrentServerRoles 4096 (ProvisionedServer) holds no "
    "role this exporter probes",
    f"{server_dn('EX2019-01', samba.LEGACY_AG_DN)}: skipped: duplicate server name EX2019-01, already used "
    f"by {server_dn('EX2019-01')}",
)


UNTRUSTED = (
    "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate"
)


def assert_lab_inventory(result: DiscoveryResult) -> None:
    inventory = result.inventory
    assert inventory.organisation == "Contoso Lab"
    assert inventory.servers == EXPECTED_SERVERS
    assert inventory.domain_controllers == EXPECTED_DCS
    assert inventory.warnings == EXPECTED_WARNINGS
    # the DAG object's msExchFileShareWitness (a UNC path) names the witness server its members need
    assert inventory.witnesses == (("DAG01", "fsw01.lab.example.test"),)
    assert result.sites == EXPECTED_SITES
    assert (result.forest, result.domain) == ("lab.example.test", "lab.example.test")


# ---- discovery over each transport and bind ------------------------------------------------------
def test_ldaps_with_verified_certificate_reads_the_organisation_exactly(samba_lab: SambaLab) -> None:
    result = discover(lab_settings(samba_lab))
    assert_lab_inventory(result)
    assert result.url == f"ldaps://{LAB_IP}:636"
    assert result.inventory.source == f"ldap:ldaps://{LAB_IP}:636"


def test_starttls_with_verified_certificate_reads_the_same_organisation(samba_lab: SambaLab) -> None:
    result = discover(lab_settings(samba_lab, urls=(f"ldap://{LAB_IP}",), starttls=True))
    assert_lab_inventory(result)
    assert result.url == f"ldap://{LAB_IP}:389"


def test_small_pages_still_return_every_object(samba_lab: SambaLab) -> None:
    # 2 entries a page: the servers, subnets and DC searches each take several paged round trips
    assert_lab_inventory(discover(lab_settings(samba_lab, page_size=2)))


def test_transport_child_objects_match_the_class_but_are_not_servers(samba_lab: SambaLab) -> None:
    from ldap3 import Connection, Tls
    from ldap3 import Server as LdapServer

    tls = Tls(ca_certs_file=str(samba_lab.certificates.ca))
    conn = Connection(
        LdapServer(LAB_IP, 636, use_ssl=True, tls=tls), samba.ADMIN_UPN, samba.ADMIN_PASSWORD, auto_bind=True
    )
    try:
        conn.search(samba.ORG_DN, "(objectClass=msExchExchangeServer)", attributes=["cn"])
        naive = {str(e.entry_dn).split(",", 1)[0] for e in conn.entries}
        conn.search(samba.ORG_DN, SERVER_FILTER, attributes=["cn"])
        filtered = [str(e.entry_dn).split(",", 1)[0] for e in conn.entries]
    finally:
        conn.unbind()
    assert {"CN=Frontend", "CN=Mailbox"} <= naive
    assert len(filtered) == 11
    assert not {"CN=Frontend", "CN=Mailbox"} & set(filtered)


def test_hostile_text_in_the_directory_is_kept_made_safe_and_warned_about(samba_lab: SambaLab) -> None:
    """A site named with markup, a terminal escape and a right-to-left override, and an Exchange server in
    it whose name holds a bidi override: discovery keeps both, replaces each unsafe character with U+FFFD,
    and warns naming the server. Added to the running DC for this test and removed after it."""
    from ldap3 import Connection, Tls
    from ldap3 import Server as LdapServer
    from ldap3.utils.dn import escape_rdn

    site = "Annex<img src=x onerror=alert(1)>\x1b[31m\u202eevil"
    name = "EX-\u202eLIVE"
    site_dn = f"CN={escape_rdn(site)},{samba.SITES_DN}"
    server_dn = f"CN={escape_rdn(name)},CN=Servers,{samba.AG_DN}"
    tls = Tls(ca_certs_file=str(samba_lab.certificates.ca))
    conn = Connection(
        LdapServer(LAB_IP, 636, use_ssl=True, tls=tls), samba.ADMIN_UPN, samba.ADMIN_PASSWORD, auto_bind=True
    )
    try:
        assert conn.add(site_dn, ["top", "site"]), conn.result
        added = conn.add(
            server_dn,
            ["top", "server", "msExchExchangeServer"],
            {
                "msExchCurrentServerRoles": 16423,
                "serialNumber": "Version 15.2 (Build 31544.4)",
                "networkAddress": ["ncacn_ip_tcp:ex-live.lab.example.test"],
                "msExchServerSite": site_dn,
            },
        )
        assert added, conn.result
        result = discover(lab_settings(samba_lab))
    finally:
        conn.delete(server_dn)
        conn.delete(site_dn)
        conn.unbind()
    shown_site = "Annex<img src=x onerror=alert(1)>\ufffd[31m\ufffdevil"
    (live,) = [s for s in result.inventory.servers if s.fqdn == "ex-live.lab.example.test"]
    assert (live.name, live.site) == ("EX-\ufffdLIVE", shown_site)
    assert shown_site in result.sites
    assert (
        "ex-live.lab.example.test: name, site held control, line-separator or bidi characters; each is "
        "shown as U+FFFD"
    ) in result.warnings
    unsafe = {*range(0x20), 0x7F, 0x202E}
    assert not [w for w in result.warnings if {ord(c) for c in w} & unsafe]  # the DN in a warning too
    # the rest of the organisation is untouched, and the lab is as it was
    assert_lab_inventory(discover(lab_settings(samba_lab)))


def test_relaxed_dc_accepts_an_explicitly_allowed_insecure_simple_bind(
    samba_lab: SambaLab, relaxed_dc: SambaDC, caplog: pytest.LogCaptureFixture
) -> None:
    result = discover(lab_settings(samba_lab, urls=(f"ldap://{RELAXED_IP}",), allow_insecure_bind=True))
    assert_lab_inventory(result)
    assert result.url == f"ldap://{RELAXED_IP}:389"
    assert f"simple bind to ldap://{RELAXED_IP}:389 without TLS" in caplog.text


def test_simple_bind_over_plain_ldap_is_refused_by_our_code_before_connecting(samba_lab: SambaLab) -> None:
    with pytest.raises(ConfigError) as caught:
        lab_settings(samba_lab, urls=(f"ldap://{RELAXED_IP}",))
    assert caught.value.message == (
        f"refusing a simple bind to ldap://{RELAXED_IP}:389 without TLS: the password would cross the "
        "network in clear text"
    )
    assert (
        caught.value.fix
        == f"use ldaps://{RELAXED_IP}:636 or --ldap.starttls (--ldap.allow-insecure-bind is for labs)"
    )


def test_hardened_dc_refuses_even_an_allowed_insecure_bind_with_a_clear_reason(samba_lab: SambaLab) -> None:
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(lab_settings(samba_lab, urls=(f"ldap://{LAB_IP}",), allow_insecure_bind=True))
    assert caught.value.reason is Reason.BIND
    assert caught.value.failures == (
        EndpointFailure(
            f"ldap://{LAB_IP}:389",
            Reason.BIND,
            "strongerAuthRequired (8): BindSimple: Transport encryption required.",
        ),
    )
    assert caught.value.fix == "the DC requires TLS or signing: use ldaps:// or --ldap.starttls"


@pytest.mark.parametrize("trust", ["other-ca", "system-store"])
def test_certificate_from_an_untrusted_ca_is_a_tls_failure(samba_lab: SambaLab, trust: str) -> None:
    ca_file = str(samba_lab.certificates.other_ca) if trust == "other-ca" else None
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(lab_settings(samba_lab, ca_file=ca_file))
    assert caught.value.reason is Reason.TLS
    assert caught.value.failures == (EndpointFailure(f"ldaps://{LAB_IP}:636", Reason.TLS, UNTRUSTED),)
    assert caught.value.fix == "trust the CA that issued the DC's certificate with --ldap.ca-file"


def test_starttls_with_an_untrusted_ca_is_a_tls_failure(samba_lab: SambaLab) -> None:
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(
            lab_settings(
                samba_lab,
                urls=(f"ldap://{LAB_IP}",),
                starttls=True,
                ca_file=str(samba_lab.certificates.other_ca),
            )
        )
    assert caught.value.reason is Reason.TLS
    assert caught.value.failures[0].detail.startswith("StartTLS: [SSL: CERTIFICATE_VERIFY_FAILED]")


def test_wrong_password_is_a_bind_failure(samba_lab: SambaLab) -> None:
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(lab_settings(samba_lab, password=Secret("not-the-password")))
    assert caught.value.reason is Reason.BIND
    assert caught.value.failures[0].detail.startswith("invalidCredentials (49): 80090308: LdapErr:")
    assert (
        caught.value.fix
        == "check the bind user and the password (EXFW_BIND_PASSWORD or --ldap.bind-password-file)"
    )


def test_ntlm_bind_reaches_the_dc_and_samba_s_refusal_is_explained(samba_lab: SambaLab) -> None:
    # ldap3's NTLM is Microsoft's Sicily bind; Samba's LDAP server does not implement it and drops the
    # session, so against this lab NTLM can only prove it is wired up and explained (see the report).
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(lab_settings(samba_lab, auth="ntlm", bind_user=samba.ADMIN_NTLM))
    assert caught.value.failures == (
        EndpointFailure(
            f"ldaps://{LAB_IP}:636",
            Reason.BIND,
            "LDAPSessionTerminatedByServerError: session terminated by server",
        ),
    )
    assert caught.value.fix == (
        "the DC dropped the NTLM (Sicily) bind, which Samba DCs do not implement: use simple bind over LDAPS"
    )


def test_ntlm_needs_a_domain_qualified_user(samba_lab: SambaLab) -> None:
    with pytest.raises(ConfigError, match=r"NTLM needs the bind user as DOMAIN\\user"):
        lab_settings(samba_lab, auth="ntlm", bind_user=samba.ADMIN_UPN)


def test_kerberos_without_the_gssapi_module_is_a_config_error(
    samba_lab: SambaLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gssapi", None)  # makes `import gssapi` fail
    with pytest.raises(ConfigError) as caught:
        lab_settings(samba_lab, auth="kerberos")
    assert caught.value.message == "Kerberos needs the Python module gssapi, which is not installed"


# ---- several DCs, failures, refresh --------------------------------------------------------------
def test_first_working_url_wins_after_a_closed_port(samba_lab: SambaLab, closed_port: int) -> None:
    result = discover(lab_settings(samba_lab, urls=(f"ldaps://{LAB_IP}:{closed_port}", f"ldaps://{LAB_IP}")))
    assert result.url == f"ldaps://{LAB_IP}:636"
    assert_lab_inventory(result)


def test_all_urls_failing_is_one_error_saying_which_failed_how(samba_lab: SambaLab, closed_port: int) -> None:
    settings = lab_settings(
        samba_lab,
        urls=(f"ldaps://{LAB_IP}:{closed_port}", f"ldaps://{LAB_IP}"),
        ca_file=str(samba_lab.certificates.other_ca),
    )
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(settings)
    tls_detail = UNTRUSTED
    assert caught.value.failures == (
        EndpointFailure(f"ldaps://{LAB_IP}:{closed_port}", Reason.CONNECT, "connection refused"),
        EndpointFailure(f"ldaps://{LAB_IP}:636", Reason.TLS, tls_detail),
    )
    assert caught.value.reason is Reason.TLS  # the furthest any DC got
    assert str(caught.value) == (
        f"directory discovery failed: ldaps://{LAB_IP}:{closed_port}: connect: connection refused; "
        f"ldaps://{LAB_IP}:636: tls: {tls_detail} (fix: check the address, the port and the firewall between "
        "here and the DC; trust the CA that issued the DC's certificate with --ldap.ca-file)"
    )


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_unreachable_dc_keeps_the_last_inventory_and_goes_stale(
    samba_lab: SambaLab, closed_port: int
) -> None:
    clock = FakeClock(1_000_000.0)
    source = DirectorySource(lab_settings(samba_lab), interval=900)
    refresher = InventoryWatcher(source, clock=clock)
    assert refresher.stale() is True  # nothing discovered yet
    assert refresher.read_once() is True
    good = refresher.inventory
    assert isinstance(good, Inventory) and good.servers == EXPECTED_SERVERS

    source.settings = lab_settings(samba_lab, urls=(f"ldaps://{LAB_IP}:{closed_port}",))
    clock.now += 900
    assert refresher.read_once() is False
    assert refresher.inventory is good  # a failed refresh removes no target
    assert refresher.last_success_timestamp == 1_000_000.0
    assert refresher.errors_total == {
        "config": 0,
        "dns": 0,
        "connect": 1,
        "tls": 0,
        "bind": 0,
        "search": 0,
        "internal": 0,
    }
    assert refresher.last_failure is not None
    assert (refresher.last_failure.at, refresher.last_failure.reason) == (1_000_900.0, "connect")
    assert refresher.last_failure.message.startswith(
        f"directory discovery failed: ldaps://{LAB_IP}:{closed_port}: connect: connection refused"
    )
    assert refresher.stale(1_000_000.0 + 3 * 900) is False
    assert refresher.stale(1_000_000.0 + 3 * 900 + 1) is True

    source.settings = lab_settings(samba_lab)
    assert refresher.read_once() is True
    assert refresher.stale() is False
    assert refresher.errors_total["connect"] == 1


def test_a_bug_in_discovery_is_counted_and_keeps_the_inventory() -> None:
    class Broken(DirectorySource):
        def read(self) -> Inventory:
            raise KeyError("surprise")

    refresher = InventoryWatcher(
        Broken(
            LdapSettings(urls=("ldaps://dc.invalid",), bind_user="u@x.test", password=Secret("p")),
            interval=60,
        ),
        clock=FakeClock(5.0),
    )
    assert refresher.read_once() is False
    assert refresher.inventory is None
    assert refresher.errors_total["internal"] == 1
    assert refresher.last_failure is not None and refresher.last_failure.message == "KeyError: 'surprise'"


# ---- DNS SRV against Samba's internal DNS --------------------------------------------------------
def test_dns_srv_finds_the_site_s_dc_in_samba_dns(samba_lab: SambaLab) -> None:
    located = locate_dcs("lab.example.test", site="HQ", nameserver=(LAB_IP, 53))
    assert located == [LocatedDc("dc1.lab.example.test", 389, 0, 100, True, (LAB_IP,))]


def test_dns_srv_falls_back_to_the_domain_wide_record_for_a_site_without_dcs(samba_lab: SambaLab) -> None:
    located = locate_dcs("lab.example.test", site="Branch", nameserver=(LAB_IP, 53))
    assert located == [LocatedDc("dc1.lab.example.test", 389, 0, 100, False, (LAB_IP,))]


def test_dns_srv_takes_the_domain_from_the_resolver_search_list(samba_lab: SambaLab, tmp_path: Path) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {LAB_IP}\nsearch lab.example.test\n")
    located = locate_dcs(resolv_conf=str(resolv_conf))
    assert located == [LocatedDc("dc1.lab.example.test", 389, 0, 100, False, ())]


def test_discovery_without_urls_locates_the_dc_in_dns_and_verifies_its_name(samba_lab: SambaLab) -> None:
    result = discover(lab_settings(samba_lab, urls=(), domain="lab.example.test", dns_server=(LAB_IP, 53)))
    assert result.url == "ldaps://dc1.lab.example.test:636"
    assert_lab_inventory(result)


def test_a_domain_without_dc_records_is_a_dns_failure(samba_lab: SambaLab) -> None:
    with pytest.raises(LdapDiscoveryError) as caught:
        discover(lab_settings(samba_lab, urls=(), domain="nowhere.lab.example.test", dns_server=(LAB_IP, 53)))
    assert caught.value.reason is Reason.DNS
    assert caught.value.message == (
        f"no domain controller in DNS: {LAB_IP}:53 has no SRV records for "
        "_ldap._tcp.dc._msdcs.nowhere.lab.example.test"
    )


def test_nameserver_argument_forms() -> None:
    assert parse_nameserver("10.0.0.53") == ("10.0.0.53", 53)
    assert parse_nameserver("127.0.77.1:5353") == ("127.0.77.1", 5353)
    assert parse_nameserver("[fd00::53]:54") == ("fd00::53", 54)
    assert parse_nameserver("fd00::53") == ("fd00::53", 53)
    with pytest.raises(ConfigError):
        parse_nameserver("dns.example.com")


def test_subnets_place_an_address_in_its_site(samba_lab: SambaLab) -> None:
    result = discover(lab_settings(samba_lab))
    assert [result.site_of(a) for a in ("10.20.3.4", "10.2.0.9", "10.1.200.3", "10.2.1.9", "not-an-ip")] == [
        "Branch",
        "HQ",
        "HQ",
        None,
        None,
    ]
    assert result.site_of("192.0.2.1") is None


# ---- the discover command ------------------------------------------------------------------------
def discover_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_discover_arguments(parser)
    return parser.parse_args(list(argv))


def test_discover_yaml_is_a_static_inventory_that_loads_back(
    samba_lab: SambaLab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXFW_BIND_PASSWORD", raising=False)
    password_file = tmp_path / "bind-password"
    password_file.write_text(samba.ADMIN_PASSWORD + "\n")
    common = [
        "--ldap-url",
        f"ldaps://{LAB_IP}",
        "--bind-user",
        samba.ADMIN_UPN,
        "--bind-password-file",
        str(password_file),
        "--ca-file",
        str(samba_lab.certificates.ca),
    ]

    assert run_discover(discover_args(*common, "--output", "yaml")) == 0
    yaml_out, yaml_err = capsys.readouterr()
    inventory_file = tmp_path / "inventory.yaml"
    inventory_file.write_text(yaml_out)
    loaded = load_inventory(inventory_file)
    assert loaded.organisation == "Contoso Lab"
    assert loaded.servers == EXPECTED_SERVERS
    assert loaded.domain_controllers == EXPECTED_DCS
    assert loaded.witnesses == (("DAG01", "fsw01.lab.example.test"),)  # the yaml keeps it too
    assert yaml_err.splitlines() == [f"warning: {w}" for w in EXPECTED_WARNINGS]
    assert "#   HQ: 10.1.0.0/16, 10.2.0.0/24" in yaml_out.splitlines()

    assert run_discover(discover_args(*common, "--output", "json")) == 0
    json_out, _ = capsys.readouterr()
    assert json.loads(json_out) == yaml.safe_load(yaml_out)

    assert run_discover(discover_args(*common)) == 0
    table, _ = capsys.readouterr()
    rows = [line.split() for line in table.splitlines()]
    assert ["dc", "RODC1", "rodc1.lab.example.test", "Branch", "gc,rodc"] in rows
    assert [
        "exchange",
        "EXSE-01",
        "exse-01.lab.example.test",
        "Branch",
        "clientaccess,frontendtransport,hubtransport,mailbox",
        "15.2.2562.17",
        "(SE)",
        "DAG02:64327",
    ] in rows


def test_discover_exit_codes_say_config_error_or_failure(
    samba_lab: SambaLab, closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXFW_BIND_PASSWORD", samba.ADMIN_PASSWORD)
    common = ["--bind-user", samba.ADMIN_UPN, "--ca-file", str(samba_lab.certificates.ca)]
    assert run_discover(discover_args(*common, "--ldap-url", f"ldap://{LAB_IP}")) == 2
    assert capsys.readouterr().err.startswith(f"error: refusing a simple bind to ldap://{LAB_IP}:389")
    assert run_discover(discover_args(*common, "--ldap-url", f"ldaps://{LAB_IP}:{closed_port}")) == 1
    assert capsys.readouterr().err.startswith(
        f"error: directory discovery failed: ldaps://{LAB_IP}:{closed_port}: connect: connection refused"
    )
    monkeypatch.delenv("EXFW_BIND_PASSWORD")
    assert run_discover(discover_args(*common, "--ldap-url", f"ldaps://{LAB_IP}")) == 2
    assert capsys.readouterr().err == (
        "error: simple bind needs a password "
        "(fix: set EXFW_BIND_PASSWORD or give --ldap.bind-password-file FILE)\n"
    )


# ---- the password never leaks --------------------------------------------------------------------
def test_password_never_appears_in_logs_errors_reprs_or_output(
    samba_lab: SambaLab,
    closed_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ldap3.utils.log import EXTENDED, OFF, set_library_log_detail_level

    wrong = "Wrong-Pass-Leak-Probe-4471"
    caplog.set_level(logging.DEBUG)
    set_library_log_detail_level(EXTENDED)  # ldap3's own protocol logging too
    texts: list[str] = []
    try:
        attempts = [
            lab_settings(samba_lab, password=Secret(wrong)),  # reaches the DC, bind refused
            lab_settings(samba_lab, password=Secret(wrong), auth="ntlm", bind_user=samba.ADMIN_NTLM),
            lab_settings(
                samba_lab, urls=(f"ldap://{LAB_IP}",), allow_insecure_bind=True, password=Secret(wrong)
            ),  # strongerAuthRequired after sending it
            lab_settings(samba_lab, urls=(f"ldaps://{LAB_IP}:{closed_port}",)),  # the real one, unreachable
        ]
        for settings in attempts:
            texts += [repr(settings), str(settings)]
            with pytest.raises(LdapDiscoveryError) as caught:
                discover(settings)
            texts += [
                str(caught.value),
                repr(caught.value),
                repr(caught.value.failures),
                str(caught.value.fix),
            ]
        password_file = tmp_path / "pw"
        password_file.write_text(wrong + "\n")
        secret = read_password(password_file)
        texts += [repr(secret), str(secret), f"{secret}"]
        assert secret is not None and secret.reveal() == wrong
        monkeypatch.setenv("EXFW_BIND_PASSWORD", samba.ADMIN_PASSWORD)
        code = run_discover(
            discover_args(
                "--ldap-url",
                f"ldaps://{LAB_IP}:{closed_port}",
                "--bind-user",
                samba.ADMIN_UPN,
                "--ca-file",
                str(samba_lab.certificates.ca),
                "--log.level",
                "debug",
            )
        )
        assert code == 1
    finally:
        set_library_log_detail_level(OFF)
    out, err = capsys.readouterr()
    texts += [caplog.text, out, err]
    assert any("ldap3" in r.name for r in caplog.records)  # the library did log: we looked at its words
    for text in texts:
        assert wrong not in text
        assert samba.ADMIN_PASSWORD not in text


# ---- decoding, without a directory ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("mask", "major", "roles"),
    [
        (16439, 15, {"clientaccess", "mailbox", "um", "hubtransport", "frontendtransport"}),  # 2016 Mailbox
        (16423, 15, {"clientaccess", "mailbox", "hubtransport", "frontendtransport"}),  # 2019/SE Mailbox
        (64, 15, {"edge"}),
        (54, 15, {"mailbox", "um", "hubtransport"}),  # 2013 back end: its ClientAccess bit is not CAS
        (16385, 15, {"clientaccess", "frontendtransport"}),  # 2013 CAS (Cafe + FrontendTransport)
        (38, 14, {"mailbox", "clientaccess", "hubtransport"}),  # 2010 CAS+Hub+Mailbox
    ],
)
def test_role_bits_map_onto_roles(mask: int, major: int, roles: set[str]) -> None:
    decoded = decode_roles(mask, major)
    assert {r.value for r in decoded.roles} == roles
    assert decoded.unknown_bits == 0


def test_unknown_role_bits_are_returned_not_dropped() -> None:
    decoded = decode_roles(16423 | 1 << 20 | 1 << 30, 15)
    assert decoded.unknown_bits == 1 << 20 | 1 << 30
    assert decoded.names == ("Cafe", "Mailbox", "ClientAccess", "HubTransport", "FrontendTransport")


@pytest.mark.parametrize(
    ("serial", "build"),
    [
        ("Version 15.2 (Build 31118.7)", (15, 2, 1118, 7)),
        ("Version 15.2 (Build 31118.007)", (15, 2, 1118, 7)),
        ("Version 15.1 (Build 32507.6)", (15, 1, 2507, 6)),
        ("Version 15.2 (Build 32562.17)", (15, 2, 2562, 17)),
        ("Version 14.3 (Build 123.2)", (14, 3, 123, 2)),
        ("garbage", None),
        ("Version 15.2", None),
    ],
)
def test_serial_number_decoding(serial: str, build: tuple[int, ...] | None) -> None:
    assert version_from_serial(serial) == build


def test_version_number_decoding() -> None:
    assert version_from_number(1942127850) == (15, 2, 1258)
    assert version_from_number(1942063563) == (15, 1, 2507)
    assert version_from_number(1912832083) is None  # Exchange 2007 (8.3)
    assert version_from_number(12345) is None


# ---- the service running on a discovered organisation ---------------------------------------------


def test_service_runs_from_ldap_discovery_instead_of_an_inventory_file(
    samba_lab: SambaLab, tmp_path: Path
) -> None:
    """`serve --ldap-url` plans from the directory and exports discovery health. Names resolve through
    Samba's own DNS (a private resolv.conf in a mount namespace), so no lookup leaves the machine."""
    import time

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {LAB_IP}\noptions timeout:1 attempts:1\n")
    unshare = ["unshare", "--mount", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"]
    args = serve_args(
        None,
        ldap_url=f"ldaps://{LAB_IP}",
        bind_user=samba.ADMIN_UPN,
        ca_file=samba_lab.certificates.ca,
        source="monitor.lab.example.test",
        interval=5,
        timeout=0.3,
        state_file="",
    )
    svc = start_service(args, env={"EXFW_BIND_PASSWORD": samba.ADMIN_PASSWORD}, wrapper=unshare, timeout=40)
    base = svc.base
    try:
        rows = httpx.get(base + "/api/v1/paths", timeout=10).json()
        targets = {row["target"] for row in rows}
        # every member, and the DAG's file share witness (an observer probes every witness's SMB)
        members = {s.fqdn for s in EXPECTED_SERVERS} | {d.fqdn for d in EXPECTED_DCS}
        assert members | {"fsw01.lab.example.test"} == targets
        # the Edge server gets only its two documented paths, and they never count
        assert {(r["port"], r["required"]) for r in rows if r["target"].startswith("edge01")} == {
            (25, False),
            (50636, False),
        }
        # the lab's DNS knows the DC but not the Exchange servers: our DNS trouble, never a block
        states = {row["target"]: row["state"] for row in rows}
        assert states["ex2019-01.lab.example.test"] == "dns_error"
        assert not any(
            row["state"] in ("filtered", "unreachable") for row in rows if row["state"] == "dns_error"
        )
        metrics = httpx.get(base + "/metrics", timeout=10).text
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
        }
        assert values[("exchange_discovery_last_success_timestamp_seconds", ())] > time.time() - 120
        assert values[("exchange_inventory_stale", ())] == 0
        assert values[("exchange_discovery_errors_total", (("reason", "connect"),))] == 0
        assert (
            values[("exchange_inventory_members", (("kind", "domain_controller"), ("site", "Branch")))] == 2
        )
        assert samba.ADMIN_PASSWORD not in metrics
        for page in (
            "/api/v1/paths",
            "/api/v1/changes",
            "/api/v1/verdict",
            "/api/v1/mesh",
            "/api/v1/sd",
            "/matrix",
            "/",
            "/openapi.json",
            "/-/ready",
        ):
            assert samba.ADMIN_PASSWORD not in httpx.get(base + page, timeout=10).text, page
    finally:
        output = svc.stop()
    assert samba.ADMIN_PASSWORD not in output  # nor in the log
