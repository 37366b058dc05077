"""What counts against Microsoft's rule, through a real router with nftables (a lab of its own, 10.248).

A healthy organisation in which several planned ports have no listener reads compliant: the target host's
own RST says the network delivered the packet. One `drop` on a port that worked makes it non-compliant
and pages (newly blocked). An observer probing the same host through a firewall in front of it is
reported but not judged: its verdict is not applicable and the overall verdict is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.metrics import value
from tests.lab.netns import RoutedLab
from tests.lab.organisations import EX1_PORTS
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

pytestmark = pytest.mark.netns

#: planned for a 2019 Mailbox server, and nobody listens on them here (139 and 64337 are advisory: no
#: Microsoft page requires them, so they are planned, shown, and never judged; 81 and 808 are required)
NOT_LISTENING = (81, 139, 808, 64337)


@pytest.fixture(scope="module")
def healthy() -> Iterator[RoutedLab]:
    lab = RoutedLab(net=248).up()
    lab.listen(*(port for port in EX1_PORTS if port not in NOT_LISTENING))
    yield lab
    lab.down()


def organisation(lab: RoutedLab) -> dict[str, Any]:
    """EX0 is this agent (an Exchange server: its paths are judged), EX1 the target behind the router."""
    server = {"roles": ["mailbox"], "version": "2019", "site": "HQ"}
    return {
        "organisation": "Healthy",
        "servers": [
            {"name": "EX0", "fqdn": "ex0.lab.test", "address": "10.248.1.1", **server},
            {"name": "EX1", "fqdn": "ex1.lab.test", "address": lab.dst4, **server},
        ],
    }


def verdict_of(svc: Service, source: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = svc.get("/api/v1/verdict").json()
    return next(row for row in rows if row["source"] == source)


def start(tmp_path: Path, lab: RoutedLab, source: str) -> Service:
    file = tmp_path / f"{source}.yaml"
    file.write_text(yaml.safe_dump(organisation(lab)))
    args = serve_args(file, source=source, interval=3, timeout=0.4, confirm_delay=0.3, connect_only=True)
    return start_service(args)


def test_ports_nobody_listens_on_leave_a_healthy_organisation_compliant_until_a_drop(
    healthy: RoutedLab, tmp_path: Path
) -> None:
    healthy.flush()
    svc = start(tmp_path, healthy, "ex0.lab.test")
    try:
        wait_until(lambda: verdict_of(svc, "ex0.lab.test")["compliant"] is not None, timeout=60)
        verdict = verdict_of(svc, "ex0.lab.test")
        assert (verdict["compliant"], verdict["blocked"], verdict["not_listening"]) == (True, 0, 2)
        assert verdict["applicable"] is True
        rows = {r["port"]: r for r in svc.get("/api/v1/paths").json()}
        for port in NOT_LISTENING:
            assert (rows[port]["state"], rows[port]["classification"]) == ("refused", "not_listening")
            assert rows[port]["blocked"] is False and rows[port]["not_listening"] is True
            assert value(svc, "exchange_path_not_listening", port=str(port)) == 1.0
            assert value(svc, "exchange_path_blocked", port=str(port)) == 0.0
        # the metrics' verdicts are recomputed in the background every few seconds (a scrape never waits)
        wait_until(lambda: value(svc, "exchange_supportability_compliant", source="ex0.lab.test") == 1.0)
        assert value(svc, "exchange_supportability_not_listening_paths", source="ex0.lab.test") == 2.0

        healthy.block("tcp dport 445 drop")  # a port that worked: the firewall change that pages
        wait_until(lambda: value(svc, "exchange_path_newly_blocked", port="445") == 1.0, timeout=60)
        wait_until(lambda: verdict_of(svc, "ex0.lab.test")["compliant"] is False, timeout=20)
        assert verdict_of(svc, "ex0.lab.test")["offending"] == ["ex1.lab.test:445/tcp"]
        wait_until(lambda: value(svc, "exchange_supportability_compliant", source="ex0.lab.test") == 0.0)

        healthy.block("tcp dport 808 drop")  # dropped on the way now: never open, and a violation too
        wait_until(lambda: _row(svc, 808)["classification"] == "never_open")
        assert _row(svc, 808)["blocked"] is True
        wait_until(
            lambda: len(verdict_of(svc, "ex0.lab.test")["offending"]) == 2,
            timeout=20,
            message=lambda: f"verdict: {verdict_of(svc, 'ex0.lab.test')}",
        )
    finally:
        svc.stop()
        healthy.flush()


def _row(svc: Service, port: int) -> dict[str, Any]:
    """EX1's path on `port` (an observer probes EX0, this machine's side of the lab, too)."""
    rows: list[dict[str, Any]] = svc.get("/api/v1/paths", params={"target": "ex1.lab.test"}).json()
    return next(r for r in rows if r["port"] == port)


def test_an_observer_behind_a_firewall_is_reported_but_not_judged(healthy: RoutedLab, tmp_path: Path) -> None:
    healthy.flush()
    healthy.block("tcp dport 445 drop")  # e.g. the monitoring zone may not reach SMB: legitimate
    svc = start(tmp_path, healthy, "monitor.lab.test")
    try:
        wait_until(lambda: _row(svc, 445)["status"] == "blocked", timeout=60)
        assert _row(svc, 445)["blocked"] is True  # reported, in the paths and the matrix ...
        observer = verdict_of(svc, "monitor.lab.test")
        assert (observer["compliant"], observer["applicable"]) == (None, False)  # ... but not judged
        assert observer["reason"].startswith("not applicable")
        assert verdict_of(svc, "*")["compliant"] is None  # the overall verdict is not made false
        assert value(svc, "exchange_supportability_compliant", source="monitor.lab.test") is None
    finally:
        svc.stop()
        healthy.flush()


def test_an_ipv6_only_drop_between_dual_stack_hosts_is_caught_while_ipv4_stays_open(
    healthy: RoutedLab, tmp_path: Path
) -> None:
    """Windows prefers IPv6 and Microsoft does not support Exchange with IPv6 disabled: a block of one
    family is an outage. A dual-stack target is a path per family, in the paths, metrics and verdict."""
    healthy.flush()
    org = organisation(healthy)
    org["servers"][1]["addresses"] = [healthy.dst6]
    file = tmp_path / "dual.yaml"
    file.write_text(yaml.safe_dump(org))
    args = serve_args(
        file, source="ex0.lab.test", interval=3, timeout=0.4, confirm_delay=0.3, connect_only=True
    )
    svc = start_service(args)

    def smb() -> dict[str, dict[str, Any]]:
        rows: list[dict[str, Any]] = svc.get("/api/v1/paths").json()
        return {r["family"]: r for r in rows if r["port"] == 445}

    try:
        wait_until(lambda: {f: r["status"] for f, r in smb().items()} == {"ipv4": "open", "ipv6": "open"})
        assert smb()["ipv6"]["address"] == healthy.dst6
        healthy.block(f"ip6 daddr {healthy.dst6} tcp dport 445 drop")
        wait_until(lambda: smb()["ipv6"]["classification"] == "newly_blocked", timeout=60)
        assert smb()["ipv4"]["status"] == "open"  # the other family is untouched
        assert value(svc, "exchange_path_newly_blocked", port="445", family="ipv6") == 1.0
        assert value(svc, "exchange_path_newly_blocked", port="445", family="ipv4") == 0.0
        offending = ["ex1.lab.test:445/tcp [ipv6]"]  # the verdict names the family
        wait_until(lambda: verdict_of(svc, "ex0.lab.test")["offending"] == offending, timeout=20)
    finally:
        svc.stop()
        healthy.flush()
