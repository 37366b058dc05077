"""Three agents in three namespaces with an asymmetric firewall: every agent's mesh view agrees.

A -> B is blocked on the Exchange ports (not on the agents' API port), B -> A is open.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from exporter.inventory.static import parse_inventory
from exporter.plan.planner import NetworkPath, plan, shard
from tests.lab.mesh import AGENTS, MeshLab
from tests.lab.organisations import EX1_PORTS, GOOD
from tests.lab.service import serve_args
from tests.lab.waiting import answers, wait_until

pytestmark = pytest.mark.netns

API = 10135
FQDN = {name: f"{name}.mesh.test" for name in AGENTS}


def inventory() -> dict[str, Any]:
    return {
        "organisation": "Mesh",
        "servers": [
            {
                "name": name.upper(),
                "fqdn": FQDN[name],
                "address": address,
                "roles": ["mailbox"],
                "version": "2019",
                "site": f"Site-{name.upper()}",
            }
            for name, address in AGENTS.items()
        ],
    }


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    workdir = tmp_path_factory.mktemp("mesh")
    lab = MeshLab().up()
    try:
        file = workdir / "inventory.yaml"
        file.write_text(yaml.safe_dump(inventory()))
        # A -> B dropped on every port but the agents' API, so A can still read B's view
        lab.block(f"ct state new ip saddr {AGENTS['a']} ip daddr {AGENTS['b']} tcp dport != {API} drop")
        for name, address in AGENTS.items():
            lab.spawn(
                name, ["-m", "tests.lab.listener", *map(str, EX1_PORTS)], workdir / f"{name}-listener.log"
            )
            args = serve_args(
                file,
                "--web.listen-address",
                f"{address}:{API}",
                source=FQDN[name],
                interval=2,
                timeout=0.3,
                confirm_delay=0.3,
                mesh=True,
            )
            lab.spawn(name, ["-m", "exporter", *args], workdir / f"{name}.log")
        wait_until(
            lambda: all(answers(f"http://{address}:{API}/-/ready") for address in AGENTS.values()),
            timeout=40,
            interval=0.3,
            message=lambda: (workdir / "a.log").read_text(),
        )
        yield lab
    finally:
        lab.down()


def states(rows: list[dict[str, Any]], source: str, target: str) -> set[str | None]:
    return {row["state"] for row in rows if row["source"] == FQDN[source] and row["target"] == FQDN[target]}


@pytest.mark.parametrize("viewer", list(AGENTS))
def test_every_agent_sees_the_same_asymmetric_block(mesh: MeshLab, viewer: str) -> None:
    base = f"http://{AGENTS[viewer]}:{API}"
    rows = httpx.get(base + "/api/v1/mesh", timeout=20).json()
    assert {row["source"] for row in rows} == set(FQDN.values())  # all three agents' rows
    assert states(rows, "a", "b") == {"filtered"}
    assert states(rows, "b", "a") == {"open"}
    assert states(rows, "a", "c") == {"open"} and states(rows, "c", "b") == {"open"}
    assert len([r for r in rows if r["source"] == FQDN["a"] and r["target"] == FQDN["b"]]) == len(EX1_PORTS)
    page = httpx.get(base + "/matrix", timeout=20).text
    assert "3 agents (0 not answering)" in page
    row_a = page.split("<tr data-source='a.mesh.test'>", 1)[1].split("</tr>", 1)[0]
    cell_ab = row_a.split("data-target='b.mesh.test'", 1)[1].split("</td>", 1)[0]
    assert "2525/tcp smtp-transport: filtered" in cell_ab
    assert "class='cell v-" in row_a.split("data-target='b.mesh.test'", 1)[0].rsplit("<td", 1)[1]
    assert "v-open" not in row_a.split("data-target='b.mesh.test'", 1)[0].rsplit("<td", 1)[1]
    row_b = page.split("<tr data-source='b.mesh.test'>", 1)[1].split("</tr>", 1)[0]
    opening_tag_ba = row_b.split("data-target='a.mesh.test'", 1)[0].rsplit("<td", 1)[1]
    assert "class='cell v-open'" in opening_tag_ba


def test_http_service_discovery_lists_all_three_agents(mesh: MeshLab) -> None:
    groups = httpx.get(f"http://{AGENTS['c']}:{API}/api/v1/sd", timeout=10).json()
    assert sorted(target for group in groups for target in group["targets"]) == sorted(
        f"{address}:{API}" for address in AGENTS.values()
    )
    assert {group["labels"]["__meta_exchange_agent"] for group in groups} == set(FQDN.values())
    assert {group["labels"]["__meta_exchange_site"] for group in groups} == {"Site-A", "Site-B", "Site-C"}


def test_a_peer_that_does_not_answer_is_marked_never_shown_open(mesh: MeshLab) -> None:
    mesh.block(f"ip daddr {AGENTS['c']} tcp dport {API} drop")
    try:
        time.sleep(6)  # past the mesh cache
        rows = httpx.get(f"http://{AGENTS['a']}:{API}/api/v1/mesh", timeout=30).json()
        from_c = [row for row in rows if row["source"] == FQDN["c"]]
        assert from_c and all(row["state"] is None and row["peer_error"] for row in from_c)
        assert all("unreachable" in row["evidence"] for row in from_c)
        page = httpx.get(f"http://{AGENTS['a']}:{API}/matrix", timeout=30).text
        row_c = page.split("<tr data-source='c.mesh.test'>", 1)[1].split("</tr>", 1)[0]
        assert "v-unreachable-peer" in row_c and "v-open" not in row_c
    finally:
        mesh.nft("flush chain inet fw forward")
        mesh.block(f"ct state new ip saddr {AGENTS['a']} ip daddr {AGENTS['b']} tcp dport != {API} drop")


def test_shards_split_the_paths_and_a_new_prober_moves_only_its_share() -> None:
    paths: list[NetworkPath] = plan(parse_inventory(yaml.safe_load(GOOD)), "central")
    three = [shard(paths, i, 3) for i in (1, 2, 3)]
    assert sum(len(s) for s in three) == len(paths)
    assert set().union(*({p.key for p in s} for s in three)) == {p.key for p in paths}
    four = [shard(paths, i, 4) for i in (1, 2, 3, 4)]
    moved = sum(len({p.key for p in three[i]} - {p.key for p in four[i]}) for i in range(3))
    # rendezvous hashing: only what shard 4 takes over moves, nothing moves between shards 1-3
    assert moved == len(four[3])
    assert all({p.key for p in four[i]} <= {p.key for p in three[i]} for i in range(3))
