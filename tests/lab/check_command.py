"""The exporter's one-shot `check` command as a real process, on an inventory written for the test.

result = run_check(loopback_org("127.0.34.", servers=1), tmp_path, "--timeout", "0.5")
rows = json.loads(result.stdout)  # JSON unless the extra arguments ask for another --output
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "exporter"]


def run_check(
    inventory: dict[str, Any],
    tmp_path: Path,
    *extra: str,
    preexec: Callable[[], None] | None = None,
    wrapper: list[str] | None = None,
    columns: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`check --inventory <tmp_path>/inventory.yaml --source observer.test --output json EXTRA...`"""
    file = tmp_path / "inventory.yaml"
    file.write_text(yaml.safe_dump(inventory))
    cmd = [
        *(wrapper or []),
        *CLI,
        "check",
        "--inventory",
        str(file),
        "--source",
        "observer.test",
        "--output",
        "json",
        "--no-locate.reverse-dns",  # a located device is not named via the host's resolver here
        *extra,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        preexec_fn=preexec,
        env={**os.environ, "PYTHONPATH": str(REPO), **({"COLUMNS": str(columns)} if columns else {})},
    )
