"""`service install|uninstall|start|stop`: the commands it would run on Windows (built here, not run), its
argument checks, and the graceful stop the service's stop request triggers (run here, in-process)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.commands.serve import run_serve
from exporter.commands.service import ACCOUNT, SERVICE_NAME, plan_service, run_service_command, this_program
from exporter.flags import build_parser
from exporter.settings import from_args
from exporter.state.baseline import Baseline
from tests.conftest import Listeners, free_port
from tests.lab.organisations import loopback_org
from tests.lab.waiting import answers, wait_until

PROGRAM = (r"C:\Program Files\exchange-firewall-exporter\exchange-firewall-exporter.exe",)
ENV = {"ProgramData": r"D:\Data"}


def test_install_builds_a_delayed_auto_start_service_with_a_virtual_account_and_a_firewall_rule(
    tmp_path: Path,
) -> None:
    inventory = tmp_path / "org.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org("127.0.40.")))
    plan = plan_service(
        ["--inventory", "org.yaml", "--web.listen-address", ":10200", "--mesh"],
        PROGRAM,
        cwd=str(tmp_path),
        environ=ENV,
    )
    create, description, failure, failureflag, mkdir, acl, rule = plan.install()
    assert create[:3] == ["sc.exe", "create", SERVICE_NAME]
    options = dict(zip(create[3::2], create[4::2], strict=True))
    assert (
        options["start="] == "delayed-auto"
        and options["obj="] == ACCOUNT == r"NT SERVICE\ExchangeFirewallExporter"
    )
    # the program the SCM starts, quoted the Windows way, with the flags made absolute and completed
    assert options["binPath="] == (
        rf'"{PROGRAM[0]}" service run --inventory {tmp_path}\org.yaml --web.listen-address :10200 --mesh '
        r"--log.file D:\Data\exchange-firewall-exporter\exporter.log "
        r"--state.file D:\Data\exchange-firewall-exporter\state.sqlite"
    )
    assert description[:3] == ["sc.exe", "description", SERVICE_NAME]
    assert failure == [
        "sc.exe",
        "failure",
        SERVICE_NAME,
        "reset=",
        "86400",
        "actions=",
        "restart/10000/restart/60000/restart/300000",
    ]
    assert failureflag == ["sc.exe", "failureflag", SERVICE_NAME, "1"]
    assert mkdir == ["cmd.exe", "/c", "mkdir", r"D:\Data\exchange-firewall-exporter"]
    assert acl == ["icacls", r"D:\Data\exchange-firewall-exporter", "/grant", f"{ACCOUNT}:(OI)(CI)M"]
    # the rule opens the listen port to the process that listens: the exe, not a launcher
    assert rule == [
        "netsh",
        "advfirewall",
        "firewall",
        "add",
        "rule",
        "name=exchange-firewall-exporter (TCP 10200)",
        "dir=in",
        "action=allow",
        "protocol=TCP",
        "localport=10200",
        f"program={PROGRAM[0]}",
        "profile=domain,private",
    ]
    # uninstall removes the service and exactly that rule
    assert plan.uninstall() == [
        ["sc.exe", "stop", SERVICE_NAME],
        ["sc.exe", "delete", SERVICE_NAME],
        ["netsh", "advfirewall", "firewall", "delete", "rule", "name=exchange-firewall-exporter (TCP 10200)"],
    ]
    assert plan.start() == [["sc.exe", "start", SERVICE_NAME]]
    assert plan.stop() == [["sc.exe", "stop", SERVICE_NAME]]


def test_the_service_runs_the_one_file_exe_when_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert this_program() == (sys.executable, "-m", "exporter")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert this_program() == (sys.executable,)


def test_commands_run_in_order_and_a_failure_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "org.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org("127.0.40.")))
    ran: list[list[str]] = []

    def runner(command: list[str]) -> int:
        ran.append(command)
        return 5 if command[:2] == ["sc.exe", "failure"] else 0

    code = run_service_command("install", ["--inventory", str(inventory)], runner=runner, platform="win32")
    assert code == 1 and [c[:2] for c in ran][:3] == [
        ["sc.exe", "create"],
        ["sc.exe", "description"],
        ["sc.exe", "failure"],
    ]
    assert len(ran) == 7  # it goes on: the firewall rule is still created
    assert "sc.exe failure ExchangeFirewallExporter" in capsys.readouterr().err
    ran.clear()
    # uninstalling a service that is already stopped is no failure

    def stopped_already(command: list[str]) -> int:
        ran.append(command)
        return 1 if "stop" in command else 0

    args = ["--inventory", str(inventory)]
    assert run_service_command("uninstall", args, runner=stopped_already, platform="win32") == 0
    assert [c[1] for c in ran] == ["stop", "delete", "advfirewall"]


def test_off_windows_install_prints_the_commands_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "org.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org("127.0.40.")))
    assert main(["service", "install", "--inventory", str(inventory)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("sc.exe create ExchangeFirewallExporter binPath= ")
    assert "none run" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["service", "install"], "serve needs an inventory"),
        (
            ["service", "install", "--inventory", "x.yaml", "--timeout", "0"],
            "--timeout must be greater than 0",
        ),
        (
            ["service", "run", "--inventory", "x.yaml"],
            "`service run` is what the Windows service manager starts",
        ),
    ],
)
def test_service_arguments_are_checked_before_anything_is_installed(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_stop_request_stops_serve_gracefully_and_flushes_the_baseline(
    tmp_path: Path, listeners: Listeners
) -> None:
    """What the service's SvcStop does, on Linux: serve runs on another thread (as under the SCM) and the
    stop function it handed out ends it; the agent stops probing and the baseline is written."""
    org = loopback_org("127.0.41.", servers=1)
    org["domain_controllers"] = []
    inventory = tmp_path / "org.yaml"
    inventory.write_text(yaml.safe_dump(org))
    state = tmp_path / "state.sqlite"
    port = free_port()
    argv = ["serve", "--inventory", str(inventory), "--source", "observer.test", "--connect-only"]
    argv += ["--interval", "2", "--timeout", "0.3", "--state-file", str(state)]
    argv += ["--web.listen-address", f"127.0.0.1:{port}"]
    settings = from_args(build_parser().parse_args(argv))
    stops: list[object] = []
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_serve(settings, on_stop=stops.append)))
    thread.start()
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
    finally:
        wait_until(lambda: stops, timeout=10)
        stop = stops[0]
        assert callable(stop)
        stop()
        thread.join(20)
    assert not thread.is_alive() and result == [0]
    with Baseline(state) as store:
        records = store.load()
    # every planned path was probed and its record reached the file on the way out
    assert records and all(r.last_probe is not None for r in records.values())
    assert {r.last_state.value for r in records.values() if r.last_state is not None} == {"refused"}
