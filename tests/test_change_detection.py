"""A firewall change seen end to end by the running service: open -> newly blocked -> recovered.

Real service process, real listeners in a target namespace, a real nftables rule in the router between.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.metrics import metric_families, value
from tests.lab.netns import RoutedLab
from tests.lab.organisations import EX1_PORTS, routed_lab_org
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

pytestmark = pytest.mark.netns


def judged_org(lab: RoutedLab) -> dict[str, Any]:
    """The routed lab's EX1, probed from EX0 (this machine's side of the lab): an Exchange server's own
    paths, which Microsoft's rule judges (an observer's would only be reported)."""
    org = routed_lab_org(lab)
    server = {"roles": ["mailbox"], "version": "2019", "site": "HQ"}
    org["servers"].append({"name": "EX0", "fqdn": "ex0.lab.test", "address": lab.src4, **server})
    return org


@pytest.fixture
def lab_service(routed_lab: RoutedLab, tmp_path: Path) -> Iterator[tuple[RoutedLab, Service]]:
    routed_lab.flush()
    routed_lab.listen(*EX1_PORTS)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(judged_org(routed_lab)))
    svc = start_service(
        serve_args(
            file,
            source="ex0.lab.test",
            interval=4,
            timeout=0.3,
            confirm_delay=0.3,
            state_file=tmp_path / "state.sqlite",
        )
    )
    yield routed_lab, svc
    svc.proc.terminate()
    svc.proc.wait(10)
    routed_lab.flush()
    for listener in routed_lab.listeners[1:]:
        listener.kill()
        listener.wait(5)
    del routed_lab.listeners[1:]


def path_row(svc: Service, port: int) -> dict[str, Any]:
    rows = svc.get("/api/v1/paths", params={"target": "ex1.lab.test"}).json()
    return next(r for r in rows if r["port"] == port)


def test_a_path_that_worked_and_is_then_dropped_is_newly_blocked_then_recovers(
    lab_service: tuple[RoutedLab, Service],
) -> None:
    lab, svc = lab_service
    wait_until(lambda: path_row(svc, 2525)["status"] == "open")
    assert value(svc, "exchange_path_newly_blocked", port="2525") == 0.0
    assert svc.get("/api/v1/verdict").json()[-1]["compliant"] is True

    lab.block("tcp dport 2525 drop")
    blocked_at = time.monotonic()
    wait_until(lambda: value(svc, "exchange_path_newly_blocked", port="2525") == 1.0)
    took = time.monotonic() - blocked_at
    row = path_row(svc, 2525)
    assert (row["state"], row["status"], row["classification"], row["blocked"]) == (
        "filtered",
        "blocked",
        "newly_blocked",
        True,
    )
    assert row["evidence"] == "no answer to 3 SYN attempts of 0.3s"
    # only the blocked port moved; the host's other ports stay open
    assert path_row(svc, 25)["status"] == "open"
    change = svc.get("/api/v1/changes").json()[0]
    assert (change["path"], change["from_status"], change["to_status"], change["classification"]) == (
        "ex0.lab.test|ex1.lab.test|2525|tcp|smtp",
        "open",
        "blocked",
        "newly_blocked",
    )
    assert change["evidence"] == "no answer to 3 SYN attempts of 0.3s"
    # confirmation probes make the change visible well inside one probe interval plus three probes
    assert took < 4 + 3 * (3 * 0.3 + 0.3) + 5, took
    verdict = svc.get("/api/v1/verdict").json()
    assert verdict[-1]["compliant"] is False and verdict[-1]["offending"] == ["ex1.lab.test:2525/tcp"]

    lab.flush()
    wait_until(lambda: path_row(svc, 2525)["classification"] == "recovered")
    assert value(svc, "exchange_path_newly_blocked", port="2525") == 0.0
    assert value(svc, "exchange_path_blocked", port="2525") == 0.0
    changes = svc.get("/api/v1/changes").json()
    assert [(c["from_status"], c["to_status"]) for c in changes[:2]] == [
        ("blocked", "open"),
        ("open", "blocked"),
    ]
    families = metric_families(svc.get("/metrics").text)
    counted = {
        (s.labels["from"], s.labels["to"]): s.value
        for s in families["exchange_path_changes"].samples
        if s.name == "exchange_path_changes_total"
    }
    assert counted[("open", "blocked")] == 1.0 and counted[("blocked", "open")] == 1.0


def test_a_path_that_never_answered_is_never_open_not_newly_blocked(
    lab_service: tuple[RoutedLab, Service], tmp_path: Path
) -> None:
    lab, svc = lab_service
    wait_until(lambda: path_row(svc, 64337)["status"] == "open")
    lab.block("tcp dport 64337 reject with icmpx admin-prohibited")
    # The running service saw 64337 open, so for it the reject is a new block. A fresh service with an
    # empty baseline, started while the rule is in place, has never seen it open: a misconfiguration.
    # (A bare RST on a path that never worked would read "not listening": see test_verdict_semantics.)
    file = tmp_path / "inv2.yaml"
    file.write_text(yaml.safe_dump(judged_org(lab)))
    fresh = start_service(
        serve_args(
            file,
            source="ex0.lab.test",
            interval=4,
            timeout=0.3,
            confirm_delay=0.3,
            state_file=tmp_path / "fresh.sqlite",
        )
    )
    try:
        wait_until(lambda: path_row(fresh, 64337)["status"] == "blocked")
        row = path_row(fresh, 64337)
        assert (row["state"], row["classification"], row["newly_blocked"]) == (
            "unreachable",
            "never_open",
            False,
        )
        assert value(fresh, "exchange_path_newly_blocked", port="64337") == 0.0
        assert value(fresh, "exchange_path_blocked", port="64337") == 1.0
        wait_until(lambda: path_row(svc, 64337)["classification"] == "newly_blocked")
    finally:
        fresh.proc.terminate()
        fresh.proc.wait(10)
