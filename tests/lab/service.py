"""The exporter as a real process on loopback, the way every service test starts it.

    svc = start_service(serve_args(file, source="o", interval=2, timeout=0.3), env=..., ready="/-/ready")
    svc.get("/metrics"); svc.log(); svc.stop()  # stop() returns everything the process wrote

Output goes to a file (a pipe nobody reads would block a chatty process); `ready=None` waits only for the
port to accept, for services behind TLS or authentication.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from exporter.flags import build_parser, deprecated_spellings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def serve_args(
    inventory: Path | None,
    *extra: str,
    source: str,
    interval: float,
    timeout: float,
    state_file: Path | str = "",
    **flags: object,
) -> list[str]:
    """`serve --inventory FILE --source S --interval N --timeout T --state-file F`, then the keyword
    `flags` (confirm_delay=0.3 gives --confirm-delay 0.3, connect_only=True gives --connect-only) and
    `extra` as they are (for dotted flags: "--web.config.file", path). state_file "" keeps the baseline in
    memory only; inventory None leaves the organisation to the directory flags (ldap_url=...)."""
    args = ["serve"]
    if inventory is not None:
        args += ["--inventory", str(inventory)]
    args += ["--source", source, "--interval", str(interval), "--timeout", str(timeout)]
    renamed = deprecated_spellings(build_parser())
    for name, setting in flags.items():
        flag = "--" + name.replace("_", "-")
        flag = renamed.get(flag, flag)  # today's namespaced spelling (confirm_delay -> --state.confirm-delay)
        if setting is True:
            args.append(flag)
        elif setting is not None and setting is not False:
            args += [flag, str(setting)]
    # located devices are not named by reverse DNS here: that would ask the host's resolver, off this
    # machine (tests/test_locate.py names them through /etc/hosts)
    return [*args, "--state.file", str(state_file), "--no-locate.reverse-dns", *extra]


class Service:
    def __init__(self, base: str, proc: subprocess.Popen[str], log_file: Path) -> None:
        self.base = base
        self.proc = proc
        self.log_file = log_file

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.base + path, params=params, timeout=10)

    def log(self) -> str:
        """What the process wrote (stdout and stderr) so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> str:
        """SIGTERM, wait (SIGKILL after `timeout`), and return the whole log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.log()


def start_service(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    ready: str | None = "/-/ready",
    scheme: str = "http",
    log: Path | None = None,
    timeout: float = 30.0,
) -> Service:
    """`python -m exporter ARGS --web.listen-address 127.0.0.1:<free port>`, returned once `ready`
    answers 200 (or, with `ready=None`, once the port accepts); raises with the log if it exits first."""
    port = free_port()
    if log is None:
        handle, name = tempfile.mkstemp(prefix="efx-service-", suffix=".log")
        os.close(handle)
        log = Path(name)
        atexit.register(log.unlink, missing_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(wrapper or []),
                sys.executable,
                "-m",
                "exporter",
                *args,
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
    service = Service(f"{scheme}://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{service.log()[-4000:]}")
        if ready is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return service
        else:
            with contextlib.suppress(httpx.TransportError):
                if service.get(ready).status_code == 200:
                    return service
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"service did not become ready in {timeout:g}s:\n{service.log()[-4000:]}")
