"""`service install|uninstall|start|stop|run [serve flags]`: the agent as a native Windows service.

Everything here is plain data and runs anywhere (and is tested on Linux): which program the service
control manager starts and with which arguments, and the `sc.exe` and `netsh` commands that install it
with delayed automatic start, restart on failure, its own virtual account (least privilege), and the
Windows Firewall rule for its listen port, removed again with the service. Only `run` (what the SCM
starts) and executing the commands need Windows; the pywin32 glue is `exporter.commands.winservice`.
"""

from __future__ import annotations

import ntpath
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from exporter.errors import ConfigError

SERVICE_NAME = "ExchangeFirewallExporter"
DISPLAY_NAME = "Exchange firewall exporter"
DESCRIPTION = (
    "Probes every network path Exchange needs (Exchange-Exchange, Exchange-DC, clients) and serves "
    "Prometheus metrics."
)
#: the virtual service account: no password, no rights but its own, the machine account on the network
ACCOUNT = f"NT SERVICE\\{SERVICE_NAME}"
#: file flags made absolute at install time: the service starts in %SystemRoot%\System32
FILE_FLAGS = (
    "--inventory",
    "--ldap.bind-password-file",
    "--ldap.ca-file",
    "--probe.ca-file",
    "--web.config.file",
    "--mesh.ca-file",
    "--mesh.password-file",
    "--state.file",
    "--log.file",
)
#: restart after 10 s, then 60 s, then 5 min; the failure count resets after a day without one
FAILURE_ACTIONS = "restart/10000/restart/60000/restart/300000"


@dataclass(frozen=True)
class ServicePlan:
    """How this agent is installed as a service: the program, its arguments, the port to open."""

    executable: tuple[str, ...]  # the program and any leading arguments (python.exe -m exporter)
    serve_args: tuple[str, ...]  # the serve flags the service runs with
    port: int
    program_data: str  # the service's folder: state, log

    @property
    def binary_path(self) -> str:
        """What the SCM runs: `<program> service run <serve flags>`, quoted the Windows way."""
        return subprocess.list2cmdline([*self.executable, "service", "run", *self.serve_args])

    @property
    def rule_name(self) -> str:
        return f"exchange-firewall-exporter (TCP {self.port})"

    def install(self) -> list[list[str]]:
        return [
            [
                "sc.exe",
                "create",
                SERVICE_NAME,
                "binPath=",
                self.binary_path,
                "start=",
                "delayed-auto",
                "obj=",
                ACCOUNT,
                "DisplayName=",
                DISPLAY_NAME,
            ],
            ["sc.exe", "description", SERVICE_NAME, DESCRIPTION],
            ["sc.exe", "failure", SERVICE_NAME, "reset=", "86400", "actions=", FAILURE_ACTIONS],
            ["sc.exe", "failureflag", SERVICE_NAME, "1"],  # a crash with a non-zero exit restarts it too
            # the state folder: the service account may write there, nobody else but administrators
            ["cmd.exe", "/c", "mkdir", self.program_data],
            ["icacls", self.program_data, "/grant", f"{ACCOUNT}:(OI)(CI)M"],
            [
                "netsh",
                "advfirewall",
                "firewall",
                "add",
                "rule",
                f"name={self.rule_name}",
                "dir=in",
                "action=allow",
                "protocol=TCP",
                f"localport={self.port}",
                f"program={self.executable[0]}",  # the process that listens (the exe, or python.exe)
                "profile=domain,private",
            ],
        ]

    def uninstall(self) -> list[list[str]]:
        return [
            ["sc.exe", "stop", SERVICE_NAME],
            ["sc.exe", "delete", SERVICE_NAME],
            ["netsh", "advfirewall", "firewall", "delete", "rule", f"name={self.rule_name}"],
        ]

    def start(self) -> list[list[str]]:
        return [["sc.exe", "start", SERVICE_NAME]]

    def stop(self) -> list[list[str]]:
        return [["sc.exe", "stop", SERVICE_NAME]]


def this_program() -> tuple[str, ...]:
    """The program the service runs: the one-file exe when frozen (PyInstaller), else this Python."""
    if getattr(sys, "frozen", False):
        return (sys.executable,)
    return (sys.executable, "-m", "exporter")


def service_folder(environ: Mapping[str, str] | None = None) -> str:
    """The service's folder in %ProgramData%, expanded now: the SCM passes arguments as they are."""
    env = os.environ if environ is None else environ
    return ntpath.join(env.get("ProgramData", r"C:\ProgramData"), "exchange-firewall-exporter")


def absolute_files(args: list[str], cwd: str) -> list[str]:
    """The file flags' values made absolute against `cwd` (by Windows' rules, as ntpath reads them)."""
    out = list(args)
    for index, arg in enumerate(out[:-1]):
        value = out[index + 1]
        if arg in FILE_FLAGS and value and not ntpath.isabs(value) and not value.startswith("/"):
            out[index + 1] = ntpath.join(cwd, value)
    return out


def plan_service(
    serve_args: Sequence[str],
    program: tuple[str, ...] | None = None,
    *,
    cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServicePlan:
    """Check the serve flags now (a service that cannot start is worse than an error at install) and
    complete them with the service's defaults: its log file and state file in %ProgramData%."""
    from exporter.flags import build_parser, deprecated_spellings
    from exporter.settings import from_args

    folder = service_folder(environ)
    renamed = deprecated_spellings(build_parser())
    spelt = []  # old spellings in today's names, `--flag=value` split: what the checks below look for
    for arg in serve_args:
        name, sep, value = arg.partition("=")
        if name.startswith("--"):
            spelt += [renamed.get(name, name), value] if sep else [renamed.get(name, name)]
        else:
            spelt.append(arg)
    args = absolute_files(spelt, cwd or str(pathlib.Path.cwd()))
    if "--log.file" not in args:
        args += ["--log.file", ntpath.join(folder, "exporter.log")]
    if "--state.file" not in args:
        args += ["--state.file", ntpath.join(folder, "state.sqlite")]
    parsed = build_parser().parse_args(["serve", *args])
    settings = from_args(parsed)  # serve refuses to run without an inventory: so does the service
    assert settings.web is not None
    return ServicePlan(program or this_program(), tuple(args), settings.web.port, folder)


Runner = Callable[[list[str]], int]


def _execute(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode


def run_service_command(
    action: str, serve_args: Sequence[str], *, runner: Runner | None = None, platform: str = sys.platform
) -> int:
    """Carry out `action`. Off Windows (or with `runner`) nothing is executed unless a runner is given:
    the commands are printed, so an administrator can read exactly what install would do."""
    if action == "run":
        if platform != "win32":
            raise ConfigError("`service run` is what the Windows service manager starts", fix="use `serve`")
        from exporter.commands.winservice import run_under_scm

        return run_under_scm(SERVICE_NAME, DISPLAY_NAME)
    plan = plan_service(serve_args)
    commands: list[list[str]] = getattr(plan, action)()
    if runner is None and platform != "win32":
        for command in commands:
            print(subprocess.list2cmdline(command))
        print(f"(not Windows: {len(commands)} command(s) printed, none run)", file=sys.stderr)
        return 0
    run = runner or _execute
    failed = 0
    for command in commands:
        code = run(command)
        # mkdir of an existing folder, or stopping a stopped service while uninstalling, is no failure
        if code and not (
            command[:2] == ["cmd.exe", "/c"] or (action == "uninstall" and command[1] == "stop")
        ):
            print(f"error: {subprocess.list2cmdline(command)} exited {code}", file=sys.stderr)
            failed = 1
    return failed
