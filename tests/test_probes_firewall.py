"""Probes through a real firewall: a Samba DC in a namespace behind a router namespace with nftables rules.

The signature the endpoint-mapper probe exists for: 135 answers, the dynamic port it hands out is dropped.
And the UDP verdicts only a connected socket can give: drop -> FILTERED after every attempt, ICMP
port-unreachable -> REFUSED, admin-prohibited -> UNREACHABLE (with the router named as the ICMP sender).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from exporter.probes import cldap, kerberos, rpc, tcp
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import State
from tests.lab.netns import RoutedLab
from tests.lab.samba_probe_dc import DC_FQDN, ProbeDC

pytestmark = [pytest.mark.netns, pytest.mark.all_loops]  # async tests run on each of the three loops

TIMEOUT, ATTEMPTS = 0.4, 2


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedLab]:
    net = RoutedLab(net=252).up()
    dc = ProbeDC(
        net.dst4,
        tmp_path_factory.mktemp("fenced-dc"),
        services="rpc kdc cldap",
        netns=net.dst,
        wait_ports=(135, 88),
    )
    try:
        dc.start()
        yield net
    finally:
        dc.stop()
        net.down()


@pytest.fixture
def lab(fenced: RoutedLab) -> Iterator[RoutedLab]:
    fenced.flush()
    yield fenced
    fenced.flush()


@pytest.fixture
def dst(lab: RoutedLab) -> Resolved:
    return Resolved(socket.AF_INET, lab.dst4)


def at(lab: RoutedLab, port: int, check: str) -> Target:
    return Target(lab.dst4, port, check, DC_FQDN)


async def test_dropped_dynamic_rpc_port_reads_filtered_while_the_mapper_stays_open(
    lab: RoutedLab, dst: Resolved
) -> None:
    before = await rpc.lookup(dst, at(lab, 135, "rpc-epm"), TIMEOUT, ATTEMPTS)
    ports = dict(before.endpoints)
    assert set(ports) == {"drsuapi", "netlogon"}
    lab.block(f"ip daddr {lab.dst4} tcp dport {ports['drsuapi']} drop")
    after = await rpc.lookup(dst, at(lab, 135, "rpc-epm"), TIMEOUT, ATTEMPTS)
    assert after.outcome.state is State.OPEN and dict(after.endpoints) == ports
    address = (lab.dst4, ports["drsuapi"])
    dynamic = await tcp.probe_tcp(address, socket.AF_INET, TIMEOUT, ATTEMPTS)
    assert (dynamic.state, dynamic.evidence) == (State.FILTERED, "no answer to 2 SYN attempts of 0.4s")
    if ports["netlogon"] != ports["drsuapi"]:
        other = await tcp.probe_tcp((lab.dst4, ports["netlogon"]), socket.AF_INET, TIMEOUT, ATTEMPTS)
        assert other.state is State.OPEN


async def test_mapper_behind_an_admin_prohibited_reject_reads_unreachable(
    lab: RoutedLab, dst: Resolved
) -> None:
    lab.block(f"ip daddr {lab.dst4} tcp dport 135 reject with icmp type admin-prohibited")
    outcome = await rpc.check(dst, at(lab, 135, "rpc-epm"), TIMEOUT, ATTEMPTS)
    assert (outcome.state, outcome.evidence) == (State.UNREACHABLE, "EHOSTUNREACH")
    assert await rpc.resolve_endpoints(dst, at(lab, 135, "rpc-epm"), TIMEOUT) == []


async def test_udp_kerberos_and_cldap_answer_through_an_open_firewall(lab: RoutedLab, dst: Resolved) -> None:
    krb = await kerberos.check_udp(dst, at(lab, 88, "kerberos"), TIMEOUT, ATTEMPTS)
    assert (krb.state, krb.evidence) == (State.OPEN, "KRB-ERROR 25 KDC_ERR_PREAUTH_REQUIRED")
    ping = await cldap.check(dst, at(lab, 389, "cldap"), TIMEOUT, ATTEMPTS)
    assert ping.state is State.OPEN and dict(ping.details)["dc_site"] == "HQ"


async def test_udp_drop_reads_filtered_only_after_every_attempt(lab: RoutedLab, dst: Resolved) -> None:
    lab.block(f"ip daddr {lab.dst4} udp dport 88 drop")
    started = time.monotonic()
    outcome = await kerberos.check_udp(dst, at(lab, 88, "kerberos"), TIMEOUT, ATTEMPTS)
    elapsed = time.monotonic() - started
    assert (outcome.state, outcome.evidence) == (State.FILTERED, "no reply to 2 Kerberos requests of 0.4s")
    assert outcome.attempts == 2 and 0.8 <= elapsed < 1.1


async def test_udp_port_unreachable_reject_reads_refused(lab: RoutedLab, dst: Resolved) -> None:
    lab.block(f"ip daddr {lab.dst4} udp dport 389 reject with icmp type port-unreachable")
    outcome = await cldap.check(dst, at(lab, 389, "cldap"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.REFUSED
    assert outcome.evidence == f"ECONNREFUSED (ICMP type 3 code 3 from {lab.router4})"


async def test_udp_admin_prohibited_reads_unreachable_with_the_router_as_sender(
    lab: RoutedLab, dst: Resolved
) -> None:
    lab.block(f"ip daddr {lab.dst4} udp dport 88 reject with icmp type admin-prohibited")
    outcome = await kerberos.check_udp(dst, at(lab, 88, "kerberos"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.UNREACHABLE
    assert outcome.evidence == f"EHOSTUNREACH (ICMP type 3 code 13 from {lab.router4})"


async def test_udp_host_unreachable_is_seen_thanks_to_ip_recverr(lab: RoutedLab, dst: Resolved) -> None:
    lab.block(f"ip daddr {lab.dst4} udp dport 88 reject with icmp type host-unreachable")
    outcome = await kerberos.check_udp(dst, at(lab, 88, "kerberos"), TIMEOUT, ATTEMPTS)
    assert outcome.state is State.UNREACHABLE
    assert outcome.evidence == f"EHOSTUNREACH (ICMP type 3 code 1 from {lab.router4})"
