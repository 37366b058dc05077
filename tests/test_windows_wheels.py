"""The runtime dependencies install on Windows Server from wheels alone: the runtime lock, resolved for
win_amd64 (markers evaluated for Windows: pywin32 in, uvloop out), names CPython 3.11 and 3.12 wheels
that PyPI really has. Resolution by uv (pip cannot evaluate markers for another platform), download by
pip with --platform win_amd64 --only-binary=:all:. Needs the package index, as `make test` has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNTIME_LOCK = REPO / "requirements-runtime.lock"


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, f"{argv[:3]}: {done.stdout}\n{done.stderr}"
    return done.stdout


def wheel_name(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_every_runtime_dependency_has_a_cpython_win_amd64_wheel(python: str, tmp_path: Path) -> None:
    resolved = tmp_path / "windows.txt"
    run(
        str(BIN / "uv"),
        "pip",
        "compile",
        str(RUNTIME_LOCK),
        "--python-platform",
        "x86_64-pc-windows-msvc",
        "--python-version",
        python,
        "--only-binary",
        ":all:",
        "--no-header",
        "--no-annotate",
        "--quiet",
        "-o",
        str(resolved),
    )
    pins = [line.strip() for line in resolved.read_text().splitlines() if "==" in line]
    names = {pin.split("==")[0].lower() for pin in pins}
    assert "pywin32" in names and "uvloop" not in names  # Windows' markers, not this machine's
    assert {"fastapi", "uvicorn", "prometheus-client", "ldap3", "pydantic-core"} <= names
    wheels = tmp_path / "wheels"
    run(
        str(BIN / "pip"),
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        "win_amd64",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--dest",
        str(wheels),
        *pins,
    )
    got = {path.name.split("-")[0].lower() for path in wheels.glob("*.whl")}
    assert got == {wheel_name(name) for name in names}
    tag = f"cp{python.replace('.', '')}"
    for native in ("pywin32", "pydantic_core"):  # compiled: the wheel must be for this CPython on win_amd64
        (wheel,) = wheels.glob(f"{native}-*.whl")
        assert f"-{tag}-" in wheel.name and wheel.name.endswith("win_amd64.whl"), wheel.name
