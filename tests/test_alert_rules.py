"""The shipped Prometheus rules and Alertmanager routing, checked and unit-tested by the real tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "alerts" / "exchange-firewall.rules.yml"
AM = REPO / "alerts" / "alertmanager.example.yml"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is missing: `make test` installs it (Debian prometheus / prometheus-alertmanager)"
        )
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=REPO, timeout=120)


def test_promtool_accepts_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    tests = sorted((REPO / "alerts" / "tests").glob("*.test.yml"))
    assert tests
    result = run(tool("promtool"), "test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_routing_labels_and_a_runbook() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    tested = set()
    for file in (REPO / "alerts" / "tests").glob("*.test.yml"):
        for case in yaml.safe_load(file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    runbooks = (REPO / "docs" / "runbooks.md").read_text().lower()
    for alert in alerts:
        name = alert["alert"]
        assert name in tested, f"{name} has no promtool test that makes it fire"
        assert alert["labels"]["severity"] in ("critical", "warning")
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert f"\n## {anchor}\n" in runbooks, name


def test_amtool_accepts_the_example_and_routes_by_severity() -> None:
    check = run(tool("amtool"), "check-config", str(AM))
    assert check.returncode == 0, check.stdout + check.stderr
    for labels, receiver in ((["severity=critical"], "pager"), (["severity=warning"], "ticket")):
        routed = run(tool("amtool"), "config", "routes", "test", "--config.file", str(AM), *labels)
        assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr
