"""The committed Grafana dashboards: in sync with dashboards/build.py, and portable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dashboards import build

REPO = Path(__file__).resolve().parents[1]


def test_committed_json_is_what_the_code_generates() -> None:
    assert build.main(["--check"]) == 0


def panels(node: Any) -> list[dict[str, Any]]:
    found = []
    for panel in node.get("panels", []):
        found.append(panel)
        found.extend(panels(panel))
    return found


def test_dashboards_use_the_datasource_variable_and_template_variables() -> None:
    uids = set()
    for name in build.DASHBOARDS:
        data = json.loads((REPO / "dashboards" / name).read_text())
        uids.add(data["uid"])
        names = {v["name"] for v in data["templating"]["list"]}
        assert {"datasource", "source_site", "target_site", "role", "source"} <= names, name
        ids = [p["id"] for p in panels(data)]
        assert len(ids) == len(set(ids)), name
        for panel in panels(data):
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", (name, panel.get("title"))
                assert target["expr"].strip()
    assert len(uids) == len(build.DASHBOARDS) == 4
