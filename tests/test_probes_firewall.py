"""Probes through a real firewall: a Samba DC in a namespace behind a router namespace with nftables rules.

The signature the endpoint-mapper probe exists for: 135 answers, the dynamic port it hands out is dropped.
And the UDP verdicts only a connected socket can give: drop -> FILTERED after every attempt, ICMP
port-unreachable -> REFUSED, admin-prohibited -> UNREACHABLE (with the router named as the ICMP sender).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.probes import cldap, kerberos, rpc, tcp
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import State
from tests.lab.netns import RoutedLab
from tests.lab.samba_probe_dc import DC_FQDN, ProbeDC

pytestmark = [pytest.mark.netns, pytest.mark.all_loops]  # async tests run on each of the three loops

TIMEOUT, ATTEMPTS = 0.4, 2
REPO = Path(__file__).resolve().parents[1]
CHECK = [
    sys.executable,
    "-m",
    "exporter",
    "check",
    "--output",
    "json",
    "--attempts",
    "2",
    "--no-locate.reverse-dns",
]


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
    # every TCP endpoint the mapper lists, one per port: Samba's DRSUAPI, Netlogon and SAMR ports
    assert set(ports) == {"drsuapi", "netlogon", "samr"}
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


def test_check_probes_every_dynamic_rpc_port_and_reads_them_filtered_behind_a_dropped_range(
    lab: RoutedLab, tmp_path: Path
) -> None:
    """The one-shot `check` from an Exchange server's vantage: the endpoint mapper's every registered
    TCP port becomes a path of its own, and dropping only the dynamic range leaves 135 open and reads
    each of them filtered (the classic break `check` used to miss)."""
    inventory = tmp_path / "org.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "organisation": "Fenced",
                "servers": [
                    {
                        "name": "EX0",
                        "fqdn": "ex0.lab.test",
                        "roles": ["mailbox"],
                        "version": "2019",
                        "site": "HQ",
                    }
                ],
                "domain_controllers": [{"name": "DC1", "fqdn": DC_FQDN, "address": lab.dst4, "site": "HQ"}],
            }
        )
    )

    def dynamic() -> dict[int, tuple[str, str]]:
        done = subprocess.run(
            [*CHECK, "--inventory", str(inventory), "--source", "ex0.lab.test", "--timeout", "0.4"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert done.returncode in (0, 1), done.stderr
        rows = json.loads(done.stdout)
        mapper = next(r for r in rows if r["port"] == 135)
        assert (mapper["state"], mapper["details"]["protocol"]) == ("open", "ok")
        return {r["port"]: (r["service"], r["state"]) for r in rows if r["service"].startswith("rpc:")}

    before = dynamic()
    assert before and {"rpc:drsuapi", "rpc:netlogon"} & {service for service, _state in before.values()}
    assert all(state == "open" and port >= 49152 for port, (_s, state) in before.items())
    lab.block(f"ip daddr {lab.dst4} tcp dport 49152-65535 drop")
    after = dynamic()
    assert set(after) == set(before)
    assert {state for _service, state in after.values()} == {"filtered"}
