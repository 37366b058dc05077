"""One frozen, validated settings object, built from the command line once.

Every check of a flag's value lives here: a bad value is a ConfigError naming the flag and the fix (exit
2), raised before anything starts. The rest of the code takes these objects and never re-checks them.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.demo import DemoSource
from exporter.engine.prober import ProbeSettings
from exporter.errors import ConfigError
from exporter.inventory import dns_srv
from exporter.inventory.ldap_settings import LdapSettings, read_password
from exporter.inventory.sources import DirectorySource, FileSource, InventorySource
from exporter.outputs.history import PrometheusSettings, check_settings
from exporter.outputs.mesh import MeshSettings
from exporter.plan.planner import Vantage, parse_shard

MESH_PASSWORD_ENV = "EXFW_MESH_PASSWORD"  # noqa: S105 (the variable's name, not a password)


@dataclass(frozen=True)
class PlanSettings:
    """What this agent probes: who it is, where it stands, which paths."""

    source: str | None  # None: this host's FQDN (or the demo's observer)
    vantage: Vantage | None
    shard: tuple[int, int] | None
    connect_only: bool
    optional_services: frozenset[str]
    source_site: str | None


@dataclass(frozen=True)
class InventorySettings:
    """Where the inventory comes from: a file, Active Directory, or the built-in demo."""

    file: str | None = None
    directory: LdapSettings | None = None
    demo: bool = False
    reload_interval: float = 10.0  # the file is checked this often (0: never)
    discovery_interval: float = 900.0  # AD is read again this often

    def source(self) -> InventorySource:
        """The one place that decides where the inventory comes from."""
        if self.file:
            return FileSource(self.file, self.reload_interval)
        if self.directory is not None:
            return DirectorySource(self.directory, self.discovery_interval)
        return DemoSource()


@dataclass(frozen=True)
class StateSettings:
    """The baseline and the hysteresis."""

    state_file: str | None  # None: in memory
    block_after: int = 3
    recover_after: int = 1
    retention_seconds: float = 30 * 86400.0


@dataclass(frozen=True)
class WebSettings:
    host: str
    port: int
    config_file: str | None = None
    api_rate: float = 20.0


@dataclass(frozen=True)
class Settings:
    """Everything one run needs, checked."""

    command: str  # serve | demo | check
    plan: PlanSettings
    probe: ProbeSettings
    inventory: InventorySettings
    probe_ca_file: str | None = None
    state: StateSettings | None = None  # serve and demo
    web: WebSettings | None = None  # serve and demo
    mesh: MeshSettings | None = None  # serve
    demo_break_after: float | None = None  # demo
    output: str = "table"  # check
    locate_every: float = 300.0  # seconds between locations of a path that stays blocked; 0: never
    locate_max_hops: int = 30  # 0: locating disabled
    locate_reverse_dns: bool = True


def _positive(flag: str, value: float, example: str) -> float:
    if not value > 0:
        raise ConfigError(f"{flag} must be greater than 0, not {value:g}", fix=f"e.g. {flag} {example}")
    return float(value)


def _at_least(flag: str, value: int, least: int, fix: str) -> int:
    if value < least:
        raise ConfigError(f"{flag} must be at least {least}, not {value}", fix=fix)
    return value


def _within(flag: str, value: int, low: int, high: int, fix: str) -> int:
    if not low <= value <= high:
        raise ConfigError(f"{flag} must be from {low} to {high}, not {value}", fix=f"e.g. {flag} {fix}")
    return value


def _not_negative(flag: str, value: float, fix: str) -> float:
    if value < 0:
        raise ConfigError(f"{flag} must not be negative, not {value:g}", fix=fix)
    return float(value)


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:10135`, `127.0.0.1:10135`, `[::1]:10135` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--web.listen-address {value!r} is not host:port", fix="e.g. :10135 or [::1]:10135"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def wants_directory(args: argparse.Namespace) -> bool:
    """Whether the flags ask for AD discovery (an LDAP URL, or a domain to find DCs in)."""
    return bool(getattr(args, "ldap_urls", None) or getattr(args, "domain", None))


def ldap_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> LdapSettings:
    """The validated LDAP settings the directory flags describe (ConfigError when they are inconsistent)."""
    return LdapSettings(
        urls=tuple(args.ldap_urls or ()),
        bind_user=args.bind_user,
        password=read_password(args.bind_password_file, environ),
        ca_file=args.ca_file,
        starttls=args.starttls,
        auth=args.auth,
        allow_insecure_bind=args.allow_insecure_bind,
        domain=args.domain,
        site=args.site,
        dns_server=dns_srv.parse_nameserver(args.dns_server) if args.dns_server else None,
        timeout=_positive("--ldap.timeout", args.ldap_timeout, "10"),
    )


def _plan(args: argparse.Namespace, demo: bool) -> PlanSettings:
    return PlanSettings(
        source=args.source or None,
        vantage=Vantage(args.vantage) if args.vantage else None,
        shard=parse_shard(args.shard) if args.shard else None,
        connect_only=bool(args.connect_only) or demo,  # the demo's listeners speak no protocol
        optional_services=frozenset(args.enable_service),
        source_site=args.source_site,
    )


def _probe(args: argparse.Namespace) -> ProbeSettings:
    concurrency = args.max_concurrency
    if concurrency is not None:
        _at_least("--probe.max-concurrency", concurrency, 1, "leave it unset to derive it from the fd limit")
    return ProbeSettings(
        interval=_positive("--interval", getattr(args, "interval", 30.0), "30"),
        timeout=_positive("--timeout", args.timeout, "2"),
        attempts=_at_least("--attempts", args.attempts, 1, "use 3, as PortQry does"),
        max_concurrency=concurrency,
        tick=0.02 if args.command == "check" else 0.05,
        confirm_delay=_not_negative(
            "--state.confirm-delay",
            getattr(args, "confirm_delay", 0.0),
            "1, or 0 to confirm at the next interval",
        ),
        source_address=_source_address(getattr(args, "source_address", "") or ""),
    )


def _source_address(value: str) -> str:
    """--probe.source-address: an IPv4 or IPv6 address literal (an IPv6 one may carry its %scope), or ""."""
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        raise ConfigError(
            f"--probe.source-address {value!r} is not an IP address",
            fix="give one of this host's addresses, e.g. --probe.source-address 10.1.0.11 (names are not "
            "accepted: a name can resolve to an address of another interface)",
        ) from None


def _inventory(args: argparse.Namespace) -> InventorySettings:
    demo = args.command == "demo"
    if demo:
        return InventorySettings(demo=True)
    directory = None
    if not args.inventory and wants_directory(args):
        directory = ldap_settings(args)  # ConfigError (exit 2) before anything starts
    elif not args.inventory and args.command == "serve":
        # a unit or container that lost its inventory flag must not probe the demo's listeners and page
        # someone a minute later with the demo's made-up block
        raise ConfigError(
            "serve needs an inventory: --inventory FILE, or --ldap.url URL / --ldap.domain NAME to read the "
            "organisation from Active Directory",
            fix="for the built-in demo organisation run `exchange-firewall-exporter demo` (or `make run`)",
        )
    return InventorySettings(
        file=args.inventory,
        directory=directory,
        demo=not args.inventory and directory is None,
        reload_interval=_not_negative(
            "--inventory.reload-interval",
            getattr(args, "inventory_reload_interval", 0.0),
            "10, or 0 to disable",
        ),
        discovery_interval=_positive(
            "--discovery.interval", getattr(args, "discovery_interval", 900.0), "900"
        ),
    )


def _state(args: argparse.Namespace) -> StateSettings:
    from exporter.state.baseline import default_state_file

    state_file = args.state_file
    if state_file is None:
        state_file = str(default_state_file())
    return StateSettings(
        state_file=state_file or None,
        block_after=_at_least(
            "--state.block-after", args.block_after, 1, "hysteresis needs 1 or more, e.g. 3"
        ),
        recover_after=_at_least("--state.recover-after", args.recover_after, 1, "1 or more, e.g. 1"),
        retention_seconds=_positive("--state.retention-days", args.retention_days, "30") * 86400,
    )


def _mesh(args: argparse.Namespace, listen_port: int, environ: Mapping[str, str]) -> MeshSettings:
    port = args.mesh_port or listen_port
    if not 0 < port < 65536:
        raise ConfigError(f"--mesh.port {port} is not a TCP port", fix="e.g. --mesh.port 10135")
    auth = None
    if args.mesh_username:
        password = environ.get(MESH_PASSWORD_ENV, "")
        if args.mesh_password_file:
            try:
                password = pathlib.Path(args.mesh_password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"--mesh.password-file: {exc.strerror}", fix="check the path") from None
        auth = (args.mesh_username, password)
    return MeshSettings(
        enabled=args.mesh,
        port=port,
        scheme=args.mesh_scheme,
        members=args.mesh_members,
        extra=tuple(args.mesh_peer),
        advertise=args.mesh_advertise or "",
        auth=auth,
        verify=args.mesh_ca_file or True,
        prometheus=_prometheus(args),
    )


def _prometheus(args: argparse.Namespace) -> PrometheusSettings | None:
    if not getattr(args, "prometheus_url", None):
        return None
    if args.prometheus_timeout <= 0 or not math.isfinite(args.prometheus_timeout):
        raise ConfigError("--prometheus.timeout must be a positive number of seconds", fix="e.g. 10")
    for flag, path in (
        ("--prometheus.bearer-token-file", args.prometheus_bearer_token_file),
        ("--prometheus.password-file", args.prometheus_password_file),
        ("--prometheus.ca-file", args.prometheus_ca_file),
    ):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag} {path}: not a readable file", fix="check the path and its rights")
    settings = PrometheusSettings(
        url=args.prometheus_url,
        selector=args.prometheus_selector.strip(),
        bearer_token_file=args.prometheus_bearer_token_file,
        username=args.prometheus_username,
        password_file=args.prometheus_password_file,
        verify=args.prometheus_ca_file or True,
        timeout=args.prometheus_timeout,
        lookback=args.prometheus_lookback,
        changes_window=args.prometheus_changes_window,
    )
    problem = check_settings(settings)
    if problem:
        raise ConfigError(
            problem, fix='e.g. --prometheus.url http://prometheus:9090 --prometheus.selector job="exchange"'
        )
    return settings


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of a `serve`, `demo` or `check` run; ConfigError names the flag and the fix."""
    env = os.environ if environ is None else environ
    command = args.command or "serve"
    inventory = _inventory(args)
    settings = Settings(
        command=command,
        plan=_plan(args, inventory.demo),
        probe=_probe(args),
        inventory=inventory,
        probe_ca_file=args.probe_ca_file,
        output=getattr(args, "output", "table"),
        locate_every=_not_negative(
            "--locate.every", getattr(args, "locate_every", 300.0), "300, or 0 to disable locating"
        ),
        locate_max_hops=_within("--locate.max-hops", args.locate_max_hops, 0, 64, "30, or 0 to disable"),
        locate_reverse_dns=bool(args.locate_reverse_dns),
    )
    if command == "check":
        return settings
    host, port = parse_listen_address(args.listen)
    web = WebSettings(
        host,
        port,
        config_file=args.web_config_file,
        api_rate=_positive("--web.api-rate-limit", args.web_api_rate, "20"),
    )
    return Settings(
        command=settings.command,
        plan=settings.plan,
        probe=settings.probe,
        inventory=settings.inventory,
        probe_ca_file=settings.probe_ca_file,
        locate_every=settings.locate_every,
        locate_max_hops=settings.locate_max_hops,
        locate_reverse_dns=settings.locate_reverse_dns,
        state=_state(args),
        web=web,
        mesh=_mesh(args, port, env) if command == "serve" else None,
        demo_break_after=(
            _positive("--demo.break-after", args.demo_break_after, "60") if command == "demo" else None
        ),
    )
