"""Three agents in three namespaces with an asymmetric firewall: every agent's mesh view agrees.

A -> B is blocked on the Exchange ports (not on the agents' API port), B -> A is open.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.inventory.static import parse_inventory
from exporter.outputs import matrix
from exporter.plan.planner import NetworkPath, plan, shard
from tests.conftest import free_port
from tests.lab.browser import browse
from tests.lab.mesh import AGENTS, MeshLab
from tests.lab.monitoring import Process, binary, wait_http
from tests.lab.organisations import EX1_PORTS, GOOD
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import answers, wait_until

pytestmark = pytest.mark.netns

API = 10135
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
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
            lab.agents[name] = (args, workdir / f"{name}.log")
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


# ---- the mesh and its history from Prometheus ------------------------------------------------------------


@dataclass
class Central:
    prometheus: str  # its URL
    viewer: Service  # an agent in the root namespace that reads the mesh from Prometheus
    lab: MeshLab
    process: Process
    workdir: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = httpx.get(self.prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def mesh(self, at: float | str | None = None) -> list[dict[str, Any]]:
        params = {} if at is None else {"at": str(at)}
        response = self.viewer.get("/api/v1/mesh", params=params)
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows


@pytest.fixture(scope="module")
def central(mesh: MeshLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    """Real Prometheus scraping the three agents every second, and a viewer with --prometheus.url."""
    workdir = tmp_path_factory.mktemp("central")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "exchange-firewall-exporter",
                "static_configs": [{"targets": [f"{address}:{API}" for address in AGENTS.values()]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = Process(
        [
            binary("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    viewer: Service | None = None
    try:
        wait_http(url + "/-/ready")
        file = workdir / "inventory.yaml"
        file.write_text(yaml.safe_dump(inventory()))
        viewer = start_service(
            serve_args(
                file,
                "--prometheus.url",
                url,
                "--prometheus.selector",
                'job="exchange-firewall-exporter"',
                source="viewer.mesh.test",
                interval=5,
                timeout=0.3,
            ),
            log=workdir / "viewer.log",
        )
        yield Central(url, viewer, mesh, process, workdir)
    finally:
        if viewer is not None:
            viewer.proc.terminate()
            viewer.proc.wait(10)
        process.stop()


def cell_of(page: str, source: str, target: str) -> str:
    """The opening tag and content of one cell of the matrix page."""
    row = page.split(f"<tr data-source='{FQDN[source]}'>", 1)[1].split("</tr>", 1)[0]
    return (
        row.split(f"data-target='{FQDN[target]}'", 1)[0].rsplit("<td", 1)[1]
        + row.split(f"data-target='{FQDN[target]}'", 1)[1].split("</td>", 1)[0]
    )


def test_the_mesh_and_its_past_from_prometheus(central: Central) -> None:
    c_to_b = f'source="{FQDN["c"]}", target="{FQDN["b"]}", port="2525"'
    # Prometheus has seen C -> B open for a while
    wait_until(lambda: central.query(f"exchange_path_up{{{c_to_b}}} == 1"), timeout=40, interval=0.5)
    time.sleep(2)
    before = time.time()
    time.sleep(2)
    central.lab.block(f"ct state new ip saddr {AGENTS['c']} ip daddr {AGENTS['b']} tcp dport 2525 drop")
    try:
        wait_until(
            lambda: central.query(f"exchange_path_newly_blocked{{{c_to_b}}} == 1"), timeout=40, interval=0.5
        )

        def c_to_b_rows() -> list[dict[str, Any]]:
            return [
                r
                for r in central.mesh()
                if r["source"] == FQDN["c"] and r["target"] == FQDN["b"] and r["port"] == 2525
            ]

        wait_until(lambda: [r["classification"] for r in c_to_b_rows()] == ["newly_blocked"], timeout=20)
        rows = central.mesh()
        assert {row["source"] for row in rows} == set(FQDN.values())  # all three agents, from Prometheus
        assert all(row["agent_up"] for row in rows)
        (blocked,) = c_to_b_rows()
        assert blocked["state"] == "filtered" and blocked["status"] == "blocked" and blocked["newly_blocked"]
        assert blocked["state_since"] and blocked["agent"] == f"{AGENTS['c']}:{API}"
        # asymmetric: from the right source only
        assert states(rows, "b", "c") == {"open"} and states(rows, "a", "c") == {"open"}
        assert states(rows, "a", "b") == {"filtered"}  # the module's first rule: never open
        page = central.viewer.get("/matrix").text
        assert "v-new-block" in cell_of(page, "c", "b") and "2525/tcp smtp-transport: <b>filtered</b>" in (
            cell_of(page, "c", "b")
        )
        assert "class='cell v-open'" in cell_of(page, "b", "c")
        assert "paths of 3 agents from Prometheus (0 not scraped now)" in page
        assert "id=when" in page  # the time control
        # the mesh-wide change log, from Prometheus
        changes = central.viewer.get("/api/v1/mesh/changes").json()
        mine = [c for c in changes if c["path"].startswith(f"{FQDN['c']}|{FQDN['b']}|2525|")]
        assert mine and mine[0]["to_status"] == "blocked" and mine[0]["classification"] == "newly_blocked"
        assert f"{FQDN['c']} → {FQDN['b']} 2525/tcp" in page.split("<ol id=changes>", 1)[1]
        # the past: before the rule, C -> B 2525 was open; as a Unix time and as RFC 3339
        past = central.mesh(at=before)
        assert states(past, "c", "b") == {"open"} and states(past, "a", "b") == {"filtered"}
        rfc = dt.datetime.fromtimestamp(before, dt.UTC).isoformat().replace("+00:00", "Z")
        assert states(central.mesh(at=rfc), "c", "b") == {"open"}
        old_page = central.viewer.get("/matrix", params={"at": f"{before:.0f}"}).text
        assert "class='cell v-open'" in cell_of(old_page, "c", "b") and "as it was at" in old_page
        assert "const REFRESH_MS = 0;" in old_page  # a past moment does not refresh itself
        ARTIFACTS.mkdir(exist_ok=True)
        link = matrix.cell_link(FQDN["c"], FQDN["b"])
        browse(
            central.viewer.base + "/matrix" + link,
            central.workdir,
            screenshot=ARTIFACTS / "matrix-mesh.png",
            height=1100,
        )
        past_link = f"?at={before:.0f}"
        browse(
            central.viewer.base + "/matrix" + past_link,
            central.workdir,
            screenshot=ARTIFACTS / "matrix-past.png",
            height=600,
        )
        # bad moments are refused clearly
        bad = central.viewer.get("/api/v1/mesh", params={"at": "yesterday"})
        assert bad.status_code == 422 and "datetime" in bad.text
    finally:
        central.lab.nft("flush chain inet fw forward")
        central.lab.block(
            f"ct state new ip saddr {AGENTS['a']} ip daddr {AGENTS['b']} tcp dport != {API} drop"
        )


def test_a_restarted_agent_keeps_its_row_from_prometheus(central: Central) -> None:
    lab = central.lab
    wait_until(lambda: {r["source"] for r in central.mesh()} == set(FQDN.values()), timeout=30)
    # (the test before may have left C -> B on 2525 filtered a moment ago)
    wait_until(
        lambda: {r["state"] for r in central.mesh() if r["source"] == FQDN["c"]} == {"open"}, timeout=30
    )
    args, log = lab.agents["c"]
    agent_c = next(p for p in lab.processes if f"{AGENTS['c']}:{API}" in str(p.args))
    agent_c.terminate()
    agent_c.wait(10)
    lab.processes.remove(agent_c)
    try:
        wait_until(lambda: central.query(f'up{{instance="{AGENTS["c"]}:{API}"}} == 0'), timeout=20)
        time.sleep(6)  # past the viewer's cache
        rows = central.mesh()
        from_c = [r for r in rows if r["source"] == FQDN["c"]]
        assert from_c and all(r["agent_up"] is False for r in from_c)  # still shown, marked
        assert {r["state"] for r in from_c} == {"open"}  # its last known state
        page = central.viewer.get("/matrix").text
        assert "agent down" in page.split(f"<tr data-source='{FQDN['c']}'>", 1)[1].split("</tr>", 1)[0]
        assert "(1 not scraped now)" in page
    finally:
        lab.spawn("c", ["-m", "exporter", *args], log.with_suffix(".2.log"))
    wait_until(lambda: answers(f"http://{AGENTS['c']}:{API}/-/ready"), timeout=40)
    wait_until(
        lambda: all(r["agent_up"] for r in central.mesh() if r["source"] == FQDN["c"]), timeout=30, interval=1
    )
