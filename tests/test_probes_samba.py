"""Every DC-facing probe against a real Samba AD DC on 127.0.78.1: what a healthy DC's answers look like."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from exporter.engine.scheduler import Engine
from exporter.probes import cldap, dns, kerberos, ldap, registry, rpc, smb
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import Outcome, State
from tests.lab.samba import loopback_alias
from tests.lab.samba_probe_dc import DC_FQDN, DC_IP, DOMAIN, REALM, ProbeDC
from tests.lab.tls import LabPki

DC = Resolved(socket.AF_INET, DC_IP)
TIMEOUT, ATTEMPTS = 1.0, 2


@dataclass
class Lab:
    dc: ProbeDC
    pki: LabPki


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("probe-dc")
    pki = LabPki.create(work / "tls", DC_FQDN, DC_IP)
    with loopback_alias(DC_IP):
        dc = ProbeDC(DC_IP, work, pki).start()
        try:
            yield Lab(dc, pki)
        finally:
            dc.stop()


def target(port: int, check: str, name: str = DC_FQDN) -> Target:
    return Target(DC_IP, port, check, name)


def details(outcome: Outcome) -> dict[str, str]:
    return dict(outcome.details)


def skew(outcome: Outcome) -> float:
    return float(details(outcome)["clock_skew"].rstrip("s"))


async def test_dns_soa_over_udp_and_tcp_reads_open_with_noerror(lab: Lab) -> None:
    for check in (dns.check_udp, dns.check_tcp):
        outcome = await check(DC, target(53, "dns"), TIMEOUT, ATTEMPTS)
        assert (outcome.state, outcome.evidence) == (State.OPEN, f"SOA {DOMAIN}: NOERROR, serial 1")
        got = details(outcome)
        assert got["rcode"] == "NOERROR" and got["authoritative"] == "yes" and got["protocol"] == "ok"
        assert got["soa_mname"] == f"DC1.{DOMAIN}."


async def test_dns_zone_the_server_does_not_hold_is_still_open_with_its_rcode(lab: Lab) -> None:
    outcome = await dns.check_udp(DC, target(53, "dns", "dc1.not-here.test"), TIMEOUT, ATTEMPTS)
    assert (outcome.state, outcome.evidence) == (State.OPEN, "SOA not-here.test: NXDOMAIN")
    assert details(outcome)["rcode"] == "NXDOMAIN"


async def test_closed_udp_port_on_the_dc_reads_refused_with_the_icmp_origin(lab: Lab) -> None:
    outcome = await dns.check_udp(DC, target(5353, "dns"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.REFUSED
    assert outcome.evidence == f"ECONNREFUSED (ICMP type 3 code 3 from {DC_IP})"
    assert outcome.attempts == 1


async def test_kerberos_as_req_for_the_dc_account_gets_preauth_required_over_udp_and_tcp(lab: Lab) -> None:
    for check in (kerberos.check_udp, kerberos.check_tcp):
        outcome = await check(DC, target(88, "kerberos"), TIMEOUT, ATTEMPTS)
        assert (outcome.state, outcome.evidence) == (State.OPEN, "KRB-ERROR 25 KDC_ERR_PREAUTH_REQUIRED")
        got = details(outcome)
        assert (got["krb_error"], got["realm"], got["protocol"]) == ("KDC_ERR_PREAUTH_REQUIRED", REALM, "ok")
        assert abs(skew(outcome)) < 2.0  # same host: only the KDC's one-second stime resolution


async def test_kerberos_unknown_principal_is_still_the_kdc_answering(lab: Lab) -> None:
    check = kerberos.as_req_check("udp", principal="no-such-probe-account")
    outcome = await check(DC, target(88, "kerberos"), TIMEOUT, ATTEMPTS)
    assert (outcome.state, outcome.evidence) == (State.OPEN, "KRB-ERROR 6 KDC_ERR_C_PRINCIPAL_UNKNOWN")


async def test_cldap_ping_reports_the_dc_flags_and_sites(lab: Lab) -> None:
    outcome = await cldap.check(DC, target(389, "cldap"), TIMEOUT, ATTEMPTS)
    flags = "PDC|GC|LDAP|DS|KDC|CLOSEST|WRITABLE|FULL_SECRET_DOMAIN_6"
    assert (outcome.state, outcome.evidence) == (State.OPEN, f"LDAP ping: {DC_FQDN} flags {flags}")
    got = details(outcome)
    assert (got["dc_flags"], got["dc_site"], got["client_site"]) == (flags, "HQ", "HQ")
    assert (got["forest"], got["domain"], got["netbios_domain"], got["netbios_computer"]) == (
        DOMAIN,
        DOMAIN,
        "PROBE",
        "DC1",
    )
    assert (got["netlogon_opcode"], got["netlogon"], got["protocol"]) == ("23", "ok", "ok")


async def test_cldap_ping_for_a_foreign_domain_is_open_with_empty_netlogon(lab: Lab) -> None:
    outcome = await cldap.check(DC, target(389, "cldap", "dc1.elsewhere.test"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.OPEN
    assert outcome.evidence == "LDAP ping answered without Netlogon data for 'elsewhere.test' (success)"
    assert details(outcome)["netlogon"] == "empty: the DC does not serve elsewhere.test"
    assert "dc_flags" not in details(outcome)


async def test_rootdse_on_ldap_and_gc_names_the_dc_and_its_state(lab: Lab) -> None:
    for port in (389, 3268):
        outcome = await ldap.check_ldap(DC, target(port, "ldap-rootdse"), TIMEOUT, ATTEMPTS)
        assert outcome.state is State.OPEN
        assert outcome.evidence == "rootDSE of DC1.probe.example.test, GC ready TRUE, synchronized TRUE"
        got = details(outcome)
        assert (got["dns_host_name"], got["name_match"], got["gc_ready"], got["synchronized"]) == (
            "DC1.probe.example.test",
            "yes",
            "TRUE",
            "TRUE",
        )
        assert abs(skew(outcome)) < 2.0 and outcome.cert_expiry is None


async def test_ldaps_and_gc_ssl_verify_against_the_lab_ca_and_report_expiry(lab: Lab) -> None:
    check = ldap.rootdse_check(tls=True, cafile=str(lab.pki.ca_file))
    for port in (636, 3269):
        outcome = await check(DC, target(port, "ldaps"), TIMEOUT, ATTEMPTS)
        assert outcome.state is State.OPEN
        got = details(outcome)
        assert (got["tls_verify"], got["tls_name"], got["protocol"]) == ("ok", "match", "ok")
        assert got["cert_names"] == f"{DC_FQDN},{DC_IP}"
        assert outcome.cert_expiry == lab.pki.servers["good"].not_after.timestamp()


async def test_ldaps_with_an_untrusted_ca_still_reads_the_certificate(lab: Lab) -> None:
    check = ldap.rootdse_check(tls=True, cafile=str(lab.pki.other_ca_file))
    outcome = await check(DC, target(636, "ldaps"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.OPEN
    got = details(outcome)
    assert got["tls_verify"] == "failed: unable to get local issuer certificate"
    assert (got["tls_name"], got["dns_host_name"]) == ("match", "DC1.probe.example.test")
    assert outcome.cert_expiry == lab.pki.servers["good"].not_after.timestamp()


async def test_endpoint_mapper_maps_drsuapi_and_netlogon_to_ports_the_dc_listens_on(lab: Lab) -> None:
    answer = await rpc.lookup(DC, target(135, "rpc-epm"), TIMEOUT, ATTEMPTS)
    names = [name for name, _port in answer.endpoints]
    # ept_lookup lists every registration; one path per distinct port, named after its most telling
    # interface (a DC registers no Exchange interfaces): Samba serves these three on ports of their own
    assert names == ["drsuapi", "netlogon", "samr"]
    listening = lab.dc.listening_ports()
    for _name, port in answer.endpoints:
        assert port >= 49152 and port in listening
    got = details(answer.outcome)
    assert got["rpc:drsuapi"] == str(answer.endpoints[0][1])
    assert got["rpc:netlogon"] == str(answer.endpoints[1][1])
    assert answer.outcome.evidence == "endpoint mapper answered: " + " ".join(
        f"{n}:{p}" for n, p in answer.endpoints
    )
    assert await rpc.resolve_endpoints(DC, target(135, "rpc-epm"), TIMEOUT) == list(answer.endpoints)


async def test_smb_negotiate_reports_dialect_3_1_1_and_signing_required(lab: Lab) -> None:
    outcome = await smb.check(DC, target(445, "smb"), TIMEOUT, ATTEMPTS)
    assert (outcome.state, outcome.evidence) == (State.OPEN, "SMB 3.1.1, signing required")
    assert abs(skew(outcome)) < 2.0


def test_engine_runs_every_dc_check_of_the_registry_against_the_dc(lab: Lab) -> None:
    plan = [
        (53, "dns"), (53, "dns-tcp"), (88, "kerberos"), (88, "kerberos-tcp"), (389, "cldap"),
        (389, "ldap-rootdse"), (3268, "gc"), (636, "ldaps"), (3269, "gc-ssl"), (135, "rpc-epm"), (445, "smb"),
    ]  # fmt: skip
    outcomes: dict[int, Outcome] = {}

    class Sink:
        def record(self, index: int, outcome: Outcome, wall: float) -> None:
            outcomes[index] = outcome

    checks = registry.checks(cafile=str(lab.pki.ca_file))
    engine = Engine([target(p, c) for p, c in plan], Sink(), once=True, timeout=TIMEOUT, checks=checks)
    started = time.monotonic()
    asyncio.run(engine.run())
    assert time.monotonic() - started < 5.0
    for index, (port, check) in enumerate(plan):
        outcome = outcomes[index]
        assert (check, port, outcome.state, details(outcome).get("protocol")) == (
            check,
            port,
            State.OPEN,
            "ok",
        )
