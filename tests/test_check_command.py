"""`exporter check`, the one-shot command: its exit codes (0 all open, 1 a required path not open, 2 a bad
inventory) and its JSON, CSV and table outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Listeners
from tests.lab.check_command import run_check
from tests.lab.organisations import EX1_PORTS, loopback_org

REPO = Path(__file__).resolve().parents[1]


def test_check_exit_codes(tmp_path: Path, listeners: Listeners) -> None:
    inv = loopback_org("127.0.34.", servers=1)
    inv["domain_controllers"] = []
    ports = set(EX1_PORTS)
    for port in ports:
        listeners.open("127.0.34.1", port)
    # the only member is the target; an observer with everything open exits 0
    ok = run_check(inv, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert {r["port"] for r in json.loads(ok.stdout)} == ports
    listeners.close()
    bad = run_check(inv, tmp_path)
    assert bad.returncode == 1
    assert {r["state"] for r in json.loads(bad.stdout)} == {"refused"}
    (tmp_path / "broken.yaml").write_text("organisation: x\nservers: [{name: a}]\n")
    broken = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--inventory", str(tmp_path / "broken.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert broken.returncode == 2
    assert "servers[0] (a).fqdn: Field required" in broken.stderr


def test_check_csv_and_table_outputs(tmp_path: Path, listeners: Listeners) -> None:
    inv = loopback_org("127.0.35.", servers=1)
    csv_out = run_check(inv, tmp_path, "--output", "csv")
    header = csv_out.stdout.splitlines()[0].split(",")
    assert header[:4] == ["source", "source_site", "target", "target_site"] and "evidence" in header
    file = tmp_path / "inventory.yaml"
    table = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--inventory", str(file), "--source", "o"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert "ex1.loop.test (mailbox, site S): 0/15 open" in table.stdout
    assert "required path(s) NOT open" in table.stdout
