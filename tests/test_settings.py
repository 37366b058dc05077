"""Every flag is checked in one place before anything starts: exit 2, the flag named, the fix given."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import yaml

from exporter.cli import main
from exporter.flags import build_parser
from exporter.settings import from_args
from tests.lab.organisations import GOOD


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["serve", "--timeout", "0"], "--timeout"),
        (["serve", "--interval", "-1"], "--interval"),
        (["serve", "--attempts", "0"], "--attempts"),
        (["serve", "--probe.max-concurrency", "0"], "--probe.max-concurrency"),
        (["serve", "--state.block-after", "0"], "--state.block-after"),
        (["serve", "--state.recover-after", "0"], "--state.recover-after"),
        (["serve", "--state.retention-days", "0"], "--state.retention-days"),
        (["serve", "--state.confirm-delay", "-1"], "--state.confirm-delay"),
        (["serve", "--inventory.reload-interval", "-5"], "--inventory.reload-interval"),
        (["serve", "--discovery.interval", "0"], "--discovery.interval"),
        (["serve", "--web.api-rate-limit", "0"], "--web.api-rate-limit"),
        (["serve", "--web.listen-address", "nonsense"], "--web.listen-address"),
        (["serve", "--shard", "3/2"], "--shard"),
        (["serve", "--mesh.port", "70000"], "--mesh.port"),
        (["demo", "--demo.break-after", "0"], "--demo.break-after"),
        (["check", "--timeout", "-2"], "--timeout"),
        (["check", "--probe.source-address", "ex01.contoso.com"], "--probe.source-address"),
        (["serve", "--probe.source-address", "10.1.0.300"], "--probe.source-address"),
        (["check", "--ldap.url", "ldaps://dc1.example.test", "--ldap.timeout", "0"], "--ldap.timeout"),
    ],
)
def test_a_bad_value_exits_2_naming_the_flag_and_the_fix(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] == "serve":
        argv = [*argv, "--inventory", "org.yaml"]  # read only after every flag passed its check
    assert main([*argv, "--state.file", ""] if argv[0] != "check" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} ") and "(fix: " in err


def test_the_source_address_is_an_address_literal_kept_in_its_canonical_form() -> None:
    def source_address(*argv: str) -> str:
        return from_args(build_parser().parse_args(["check", *argv]), environ={}).probe.source_address

    assert source_address() == ""  # the OS chooses
    assert source_address("--probe.source-address", "10.1.0.11") == "10.1.0.11"
    assert source_address("--probe.source-address", "[FD00:0::11]") == "fd00::11"


def test_good_flags_become_one_frozen_settings_object(tmp_path: pathlib.Path) -> None:
    inventory = tmp_path / "org.yaml"
    inventory.write_text(GOOD)
    args = build_parser().parse_args(
        [
            "serve",
            "--inventory",
            str(inventory),
            "--source",
            "ex01.contoso.com",
            "--state-file",
            "",
            "--shard",
            "2/3",
        ]
    )
    settings = from_args(args, environ={})
    assert settings.command == "serve" and settings.inventory.file == str(inventory)
    assert settings.inventory.demo is False and settings.inventory.directory is None
    assert settings.plan.shard == (2, 3) and settings.plan.source == "ex01.contoso.com"
    assert settings.state is not None and settings.state.state_file is None  # '' keeps it in memory
    assert settings.web is not None and (settings.web.host, settings.web.port) == ("0.0.0.0", 10135)
    assert settings.inventory.source().kind == "file"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.command = "check"  # type: ignore[misc]


def test_without_source_the_agent_is_the_member_with_this_machine_s_name(tmp_path: pathlib.Path) -> None:
    """--source defaults to this machine's FQDN as AD knows it; when the DNS suffix here differs from
    AD's, the one member with this machine's short name is this agent (it probes as that server)."""
    import socket

    from exporter.compose import identity
    from exporter.inventory.static import load_inventory

    short = socket.gethostname().split(".")[0]
    inventory = tmp_path / "org.yaml"
    server = {"roles": ["mailbox"], "version": "2019", "site": "S"}
    servers = [
        {"name": short, "fqdn": f"{short}.ad.contoso.test", **server},
        {"name": "OTHER", "fqdn": "other.ad.contoso.test", **server},
    ]
    inventory.write_text(yaml.safe_dump({"organisation": "O", "servers": servers}))
    settings = from_args(build_parser().parse_args(["check", "--inventory", str(inventory)]), environ={})
    assert identity(settings, load_inventory(inventory)) == f"{short}.ad.contoso.test"
    given = from_args(build_parser().parse_args(["check", "--inventory", str(inventory), "--source", "x.y"]))
    assert identity(given, load_inventory(inventory)) == "x.y"


def test_serve_without_an_inventory_refuses_to_run_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """A unit or container that lost its --inventory must not probe the demo organisation (whose made-up
    block would page someone a minute later): exit 2, naming the flags and the demo command."""
    assert main(["serve", "--state-file", ""]) == 2
    err = capsys.readouterr().err
    for needed in ("--inventory", "--ldap.url", "--ldap.domain", "exchange-firewall-exporter demo"):
        assert needed in err


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_log_formats_are_one_parseable_record_a_line(fmt: str) -> None:
    """--log.format logfmt|json (as Prometheus's exporters), --log.level warn; a hostile message (a CR/LF
    forging a record, quotes, a bidi override) stays inside one record."""
    import json
    import shlex
    import subprocess
    import sys

    script = (
        "import logging; from exporter import logsetup\n"
        f"logsetup.setup('warn', None, {fmt!r})\n"
        "log = logging.getLogger('exporter.test')\n"
        "log.info('not shown at warn')\n"
        "log.warning('site %s', 'HQ\\r\\nlevel=error msg=\"forged\" \\u202e')\n"
        "try:\n    raise KeyError('boom')\nexcept KeyError:\n    log.exception('it failed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    if fmt == "json":
        first, second = (json.loads(line) for line in lines)
        assert (first["level"], first["logger"]) == ("warn", "exporter.test")
        assert first["msg"] == 'site HQ\r\nlevel=error msg="forged" \u202e' and "KeyError" in second["exc"]
    else:
        fields = [dict(part.split("=", 1) for part in shlex.split(line)) for line in lines]
        assert (fields[0]["level"], fields[0]["logger"]) == ("warn", "exporter.test")
        assert fields[0]["msg"].startswith("site HQ") and "\n" not in fields[0]["msg"]
        assert fields[1]["level"] == "error" and "KeyError" in fields[1]["msg"]
    assert main(["check", "--log.format", fmt, "--log.level", "warn", "--output", "json"]) == 1  # the demo


def test_old_flag_spellings_still_work_for_one_release_with_a_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every flag is namespaced the Prometheus way (`--mesh.port`, `--state.file`, `--ldap.url`); the
    old spellings (`--mesh-port`, `--state-file`, `--ldap-url`) still parse to the same setting."""
    from exporter.flags import deprecated_spellings

    parser = build_parser()
    renamed = deprecated_spellings(parser)
    assert renamed["--mesh-port"] == "--mesh.port" and renamed["--state-file"] == "--state.file"
    assert all("." in new and "." not in old for old, new in renamed.items())
    old = parser.parse_args(["serve", "--mesh-port", "10200", "--state-file", "x", "--block-after", "4"])
    new = parser.parse_args(
        ["serve", "--mesh.port", "10200", "--state.file", "x", "--state.block-after", "4"]
    )
    assert vars(old) == vars(new)
    caplog.set_level("WARNING")
    assert main(["serve", "--timeout", "0", "--inventory", "org.yaml", "--confirm-delay=2"]) == 2
    assert "flag --confirm-delay is deprecated: use --state.confirm-delay" in caplog.text
