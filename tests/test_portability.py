"""The exporter without what Windows lacks: no uvloop, resource, fcntl, pwd or grp, and an event loop that
refuses fd callbacks as the Proactor does (tests/lab/windowsish/sitecustomize.py makes such an
interpreter). Every module imports; `check` and `serve` read a real firewall's drop, reset and ICMP rules
exactly as the ordinary Linux interpreter does. What this does not prove: Windows' own TCP stack (it
retries a refused SYN before reporting WSAECONNREFUSED) and its Winsock error paths, which need Windows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.metrics import samples, value
from tests.lab.netns import RoutedLab
from tests.lab.organisations import EX1_PORTS, routed_lab_org
from tests.lab.service import serve_args, start_service
from tests.lab.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
WINDOWSISH = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'lab' / 'windowsish'}{os.pathsep}{REPO}"}
ORDINARY = {**os.environ, "PYTHONPATH": str(REPO)}
BLOCKED = ("uvloop", "resource", "fcntl", "pwd", "grp")

#: port -> the nftables rule in the router (None: open) for the check and serve comparisons
RULES = {
    25: None,
    135: "tcp dport 135 drop",
    445: "tcp dport 445 reject with tcp reset",
    808: "tcp dport 808 reject with icmpx admin-prohibited",
    2525: "tcp dport 2525 reject with icmpx host-unreachable",
}


def test_every_module_imports_without_the_posix_modules_and_uvloop() -> None:
    probe = (
        "import importlib, pkgutil, sys, exporter\n"
        "names = [m.name for m in pkgutil.walk_packages(exporter.__path__, 'exporter.')"
        " if m.name != 'exporter.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        "from exporter.engine.host import default_concurrency, has_fd_callbacks, new_loop\n"
        "loop = new_loop()\n"
        f"print(len(names), sorted(set(sys.modules) & set({BLOCKED!r})), default_concurrency(),"
        " type(loop).__name__, has_fd_callbacks(loop))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=WINDOWSISH, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    count, loaded, concurrency, loop, callbacks = done.stdout.split(" ", 4)
    assert int(count) > 50 and loaded == "[]"
    assert (int(concurrency), loop, callbacks.strip()) == (2048, "_NoFdCallbacksLoop", "False")
    # and the blocker is real: the same import of uvloop fails there
    failed = subprocess.run(
        [sys.executable, "-c", "import uvloop"], env=WINDOWSISH, capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 1 and "No module named 'uvloop'" in failed.stderr


@pytest.fixture
def fenced_ex1(routed_lab: RoutedLab, tmp_path: Path) -> Iterator[tuple[RoutedLab, Path]]:
    routed_lab.flush()
    routed_lab.listen(*EX1_PORTS)
    for rule in RULES.values():
        if rule:
            routed_lab.block(rule)
    file = tmp_path / "org.yaml"
    file.write_text(yaml.safe_dump(routed_lab_org(routed_lab)))
    yield routed_lab, file
    routed_lab.flush()


def check_states(file: Path, env: dict[str, str]) -> dict[int, tuple[str, str]]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "check",
            "--inventory",
            str(file),
            "--source",
            "observer.test",
            "--connect-only",
            "--timeout",
            "1.3",
            "--output",
            "json",
            "--no-locate.reverse-dns",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # required paths are blocked
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return {r["port"]: (r["state"], r["evidence"]) for r in rows if r["port"] in RULES}


@pytest.mark.netns
def test_check_reads_drop_reset_and_icmp_the_same_without_posix_modules(
    fenced_ex1: tuple[RoutedLab, Path],
) -> None:
    _lab, file = fenced_ex1
    ordinary = check_states(file, ORDINARY)
    assert {port: state for port, (state, _evidence) in ordinary.items()} == {
        25: "open",
        135: "filtered",
        445: "refused",
        808: "unreachable",
        2525: "unreachable",
    }
    assert check_states(file, WINDOWSISH) == ordinary  # the same states, with the same evidence


@pytest.mark.netns
def test_serve_reads_the_same_paths_without_posix_modules(fenced_ex1: tuple[RoutedLab, Path]) -> None:
    _lab, file = fenced_ex1
    args = serve_args(file, source="observer.test", interval=2, timeout=1.3, connect_only=True)
    svc = start_service(args, env=WINDOWSISH, timeout=60)
    try:
        want = {
            "25": "open",
            "135": "filtered",
            "445": "refused",
            "808": "unreachable",
            "2525": "unreachable",
        }

        def states() -> dict[str, str]:
            found = {}
            for key, number in samples(svc, "exchange_path_state").items():
                labels = dict(key)
                if number == 1.0 and labels["port"] in want:
                    found[labels["port"]] = labels["state"]
            return found

        wait_until(lambda: states() == want, timeout=60, message=lambda: f"states: {states()}")
        assert value(svc, "exchange_probe_concurrency_limit") == 2048.0  # no RLIMIT_NOFILE to derive it
    finally:
        log = svc.stop()
    assert "Traceback" not in log, log
