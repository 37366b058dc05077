"""The demo shows the mesh: five agents in one process, and one asymmetric firewall change a newcomer can
watch happen (a BPF filter dropping EX16A's packets at EX19B's 2525), on real loopback sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from exporter import demo
from exporter.probes import bpf
from exporter.probes.outcome import State
from exporter.probes.tcp import probe_tcp
from tests.conftest import Listeners
from tests.lab.service import Service, start_service
from tests.lab.waiting import wait_until

NO_FILTER = bpf.SO_ATTACH_FILTER is None
EX16A, EX19A, EX19B, EXSE = (f"{name}.demo.example" for name in ("ex16a", "ex19a", "ex19b", "exse"))
PORT = demo.BLOCKED[1]


@pytest.mark.skipif(NO_FILTER, reason="SO_ATTACH_FILTER is Linux's")
async def test_the_socket_filter_drops_one_source_and_lets_the_others_connect(listeners: Listeners) -> None:
    port = listeners.open("127.0.63.1")
    demo.drop_packets_from(listeners.sockets[-1], "127.0.63.2")
    dropped = await probe_tcp(("127.0.63.1", port), socket.AF_INET, 0.3, attempts=2, local="127.0.63.2")
    assert (dropped.state, dropped.evidence) == (State.FILTERED, "no answer to 2 SYN attempts of 0.3s")
    other = await probe_tcp(("127.0.63.1", port), socket.AF_INET, 0.3, attempts=2, local="127.0.63.3")
    assert other.state is State.OPEN


@pytest.fixture(scope="module")
def demo_service() -> Iterator[Service]:
    svc = start_service(
        [
            "demo",
            "--interval",
            "1",
            "--timeout",
            "0.3",
            "--demo.break-after",
            "4",
            "--state.confirm-delay",
            "0.3",
        ]
    )
    yield svc
    svc.stop()


def mesh(svc: Service) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["source"], r["target"], r["port"]): r for r in svc.get("/api/v1/mesh").json()}


def test_the_demo_runs_one_agent_per_exchange_server_beside_the_observer(demo_service: Service) -> None:
    def probed() -> dict[tuple[str, str, int], dict[str, Any]] | None:
        found = mesh(demo_service)
        return found if found and all(r["state"] for r in found.values()) else None

    rows = wait_until(probed)
    assert {source for source, _target, _port in rows} == {demo.DEMO_SOURCE, EX16A, EX19A, EX19B, EXSE}
    # pairwise: every Exchange server probes every other one, never itself
    for source in (EX16A, EX19A, EX19B, EXSE):
        assert {t for s, t, _p in rows if s == source} == {
            EX16A,
            EX19A,
            EX19B,
            EXSE,
            "dc1.demo.example",
            "dc2.demo.example",
        } - {source}
    # every endpoint of every agent's plan listens, but SE's 2525, closed on purpose (ports below 1024 need
    # root), and the block, once it is there
    low_ports_open = os.geteuid() == 0
    for (source, target, port), row in rows.items():
        if (source, target, port) == (EX16A, EX19B, PORT) or (port < 1024 and not low_ports_open):
            continue
        expected = "refused" if (target, port) == (EXSE, 2525) else "open"
        assert row["state"] == expected, (source, target, port, row["evidence"])


@pytest.mark.skipif(NO_FILTER, reason="the demo's block needs SO_ATTACH_FILTER (Linux)")
def test_the_demo_block_is_one_way_and_newly_blocked(demo_service: Service) -> None:
    def blocked() -> dict[str, Any] | None:
        row = mesh(demo_service).get((EX16A, EX19B, PORT))
        return row if row and row["classification"] == "newly_blocked" else None

    row = wait_until(blocked, timeout=60)
    assert (row["state"], row["status"], row["required"]) == ("filtered", "blocked", True)
    assert row["first_open"] is not None  # it worked before the change
    rows = mesh(demo_service)
    for other in (
        (EX19A, EX19B, PORT),
        (EXSE, EX19B, PORT),
        (demo.DEMO_SOURCE, EX19B, PORT),
        (EX19B, EX16A, PORT),
    ):
        assert (rows[other]["state"], rows[other]["status"]) == ("open", "open"), other
    newly = sorted(key for key, r in rows.items() if r["classification"] == "newly_blocked")
    assert newly == [(EX16A, EX19B, PORT)]  # the one block a newcomer sees; SE's 2525 is not listening
    assert all(rows[(s, EXSE, 2525)]["not_listening"] for s in (demo.DEMO_SOURCE, EX16A, EX19A, EX19B))
    # and it pages: the demo's one /metrics carries every agent's series (what the compose stack's
    # Prometheus alerts on)
    paging = [
        line
        for line in demo_service.get("/metrics").text.splitlines()
        if line.startswith("exchange_path_newly_blocked{") and line.endswith(" 1")
    ]
    assert len(paging) == 1
    assert (
        f'source="{EX16A}"' in paging[0]
        and f'target="{EX19B}"' in paging[0]
        and f'port="{PORT}"' in paging[0]
    )
