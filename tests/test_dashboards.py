"""The committed Grafana dashboards: in sync with dashboards/build.py, portable, and readable at 2 a.m."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build

REPO = Path(__file__).resolve().parents[1]
LINK = (
    "${matrix_url}/matrix?source=${__data.fields.source:percentencode}"
    "&target=${__data.fields.target:percentencode}"
)


def load(name: str, where: Path = REPO / "dashboards") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((where / name).read_text())
    return data


def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in node.get("panels", []):
        found.append(panel)
        found.extend(panels(panel))
    return found


def by_title(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels(dashboard) if p.get("title") == title]
    return panel


def test_committed_files_are_what_the_code_generates() -> None:
    assert build.main(["--check"]) == 0


def test_dashboards_have_stable_uids_and_the_variables_every_query_uses() -> None:
    uids = {}
    for name in build.DASHBOARDS:
        data = load(name)
        uids[name] = data["uid"]
        names = [v["name"] for v in data["templating"]["list"]]
        assert names[:7] == [
            "datasource",
            "job",
            "instance",
            "source_site",
            "target_site",
            "role",
            "source",
        ], name
        job = next(v for v in data["templating"]["list"] if v["name"] == "job")
        assert job["query"] == 'label_values(up{job="exchange-firewall-exporter"}, job)'
        ids = [p["id"] for p in panels(data)]
        assert len(ids) == len(set(ids)), name
        for panel in panels(data):
            for target in panel.get("targets", []):
                where = (name, panel.get("title"), target["expr"])
                assert target["datasource"]["uid"] == "${datasource}", where
                selectors = re.findall(r"[\w:]+\{([^}]*)\}", target["expr"])
                assert selectors, where
                for selector in selectors:
                    assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, where
    assert uids["incident.json"] == "exfw-incident"
    assert len(set(uids.values())) == len(build.DASHBOARDS) == 5


def test_every_panel_says_what_it_shows() -> None:
    for name in build.DASHBOARDS:
        for panel in panels(load(name)):
            if panel["type"] != "row":
                assert len(panel.get("description", "")) > 20, (name, panel.get("title"))


def test_no_table_shows_an_unnamed_value_column() -> None:
    """Grafana names a table's value columns `Value` (one query) or `Value #A`, `Value #B` (several):
    every table renames them (organize) or turns them into cells (grouping to matrix)."""
    tables = 0
    for name in build.DASHBOARDS:
        for panel in panels(load(name)):
            if panel["type"] != "table":
                continue
            tables += 1
            refs = [t["refId"] for t in panel["targets"]]
            columns = ["Value"] if len(refs) == 1 else [f"Value #{ref}" for ref in refs]
            handled = set()
            for step in panel.get("transformations", []):
                options = step["options"]
                if step["id"] == "organize":
                    handled |= set(options["renameByName"]) | set(options["excludeByName"])
                elif step["id"] == "groupingToMatrix":
                    handled.add(options["valueField"])
            assert set(columns) <= handled, (name, panel["title"], columns, handled)
    assert tables >= 9


def test_the_incident_table_says_how_since_and_where_and_links_the_matrix_cell() -> None:
    incident = load("incident.json")
    panel = by_title(incident, "Newly blocked now")
    (target,) = panel["targets"]
    expr = target["expr"]
    assert target["instant"] and target["format"] == "table"
    for part in (
        "exchange_path_newly_blocked{",
        "group_left (state) (exchange_path_state{",
        "exchange_path_state_since_timestamp_seconds{",
        "group_left (verdict, hop, device, device_name)",
        "exchange_path_block_location_info{",
    ):
        assert part in expr
    organize = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]
    assert organize["renameByName"] == {
        "state": "how",
        "Value": "since",
        "verdict": "where",
        "device_name": "device name",
    }
    order = sorted(organize["indexByName"], key=organize["indexByName"].get)
    assert order[:4] == ["source", "target", "port", "proto"]  # the link reads source and target as named
    overrides = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}
    assert {"id": "unit", "value": "dateTimeFromNow"} in overrides["since"]
    (mapping,) = next(p["value"] for p in overrides["how"] if p["id"] == "mappings")
    colours = {state: m["color"] for state, m in mapping["options"].items()}
    assert colours.items() >= {"filtered": "red", "refused": "orange", "unreachable": "purple"}.items()
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    assert link["url"] == LINK
    matrix = next(v for v in incident["templating"]["list"] if v["name"] == "matrix_url")
    assert matrix["query"] == build.Config().matrix_url == "http://localhost:10135"
    timeline = by_title(incident, "Newly blocked paths over time")
    assert timeline["type"] == "state-timeline"
    assert timeline["fieldConfig"]["defaults"]["mappings"][0]["options"] == {
        "0": {"color": "green", "index": 0, "text": "open"},
        "1": {"color": "red", "index": 1, "text": "blocked"},
    }
    heatmap = by_title(incident, "Newly blocked paths by site pair")
    grouping = next(t for t in heatmap["transformations"] if t["id"] == "groupingToMatrix")["options"]
    assert (grouping["rowField"], grouping["columnField"]) == ("source_site", "target_site")


def test_overview_separates_newly_blocked_from_never_open_and_names_the_site_pair_columns() -> None:
    overview = load("overview.json")
    newly = by_title(overview, "Newly blocked (paging)")["targets"][0]["expr"]
    never = by_title(overview, "Never open (to fix, not paging)")["targets"][0]["expr"]
    assert "exchange_path_newly_blocked{" in newly and " == 1" in newly
    assert "unless on (job, instance, source, target, port, proto, family, endpoint)" in never
    pairs = by_title(overview, "Site pairs: blocked of all paths")
    organize = next(t for t in pairs["transformations"] if t["id"] == "organize")["options"]
    assert organize["renameByName"]["Value #A"] == "newly blocked"
    assert organize["renameByName"]["Value #B"] == "blocked"
    assert organize["renameByName"]["Value #C"] == "paths"


def test_out_writes_a_copy_for_another_job_matrix_and_runbook_location(tmp_path: Path) -> None:
    committed = {name: (REPO / "dashboards" / name).read_text() for name in build.DASHBOARDS}
    code = build.main(
        [
            "--job-selector",
            'job="exfw", env="prod"',
            "--matrix-url",
            "https://ex01.contoso.com:10135/",
            "--runbook-url",
            "https://wiki.contoso.com/exchange/runbooks.md",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*build.DASHBOARDS, "exchange-firewall.rules.yml"]
    )
    rules_text = (tmp_path / "exchange-firewall.rules.yml").read_text()
    assert 'exchange-firewall-exporter"' not in rules_text.split("groups:", 1)[1]
    rules = yaml.safe_load(rules_text)["groups"]
    selectors = [
        selector
        for group in rules
        for rule in group["rules"]
        for selector in re.findall(r"\b(?:exchange_\w+|up)\{([^}]*)\}", rule["expr"])
    ]
    assert len(selectors) > 20
    assert all(selector.startswith('job="exfw", env="prod"') for selector in selectors), selectors
    for rule in (rule for group in rules for rule in group["rules"] if "alert" in rule):
        assert rule["annotations"]["runbook_url"] == (
            f"https://wiki.contoso.com/exchange/runbooks.md#{rule['alert'].lower()}"
        )
    incident = load("incident.json", tmp_path)
    variables = {v["name"]: v for v in incident["templating"]["list"]}
    assert variables["job"]["query"] == 'label_values(up{job="exfw", env="prod"}, job)'
    assert variables["matrix_url"]["query"] == "https://ex01.contoso.com:10135"
    runbooks = next(link for link in incident["links"] if link["title"] == "Runbooks")
    assert runbooks["url"] == "https://wiki.contoso.com/exchange/runbooks.md"
    # the committed defaults are untouched, and still what --check expects
    assert {name: (REPO / "dashboards" / name).read_text() for name in build.DASHBOARDS} == committed
    assert build.main(["--check"]) == 0
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run(
            [promtool, "check", "rules", str(tmp_path / "exchange-firewall.rules.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--job-selector", "exchange-firewall-exporter", "--out", "x"],  # not a label matcher
        ["--runbook-url", "docs/runbooks.md", "--out", "x"],  # not absolute
        ["--runbook-url", "https://wiki.contoso.com/runbooks.md#top", "--out", "x"],
        ["--matrix-url", "https://ex01.contoso.com:10135"],  # customised without --out
        ["--check", "--out", "x"],  # --check compares the committed defaults only
    ],
)
def test_options_that_cannot_work_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build.main(argv)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err
