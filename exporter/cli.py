"""Command line: `serve` (the default), `check` (probe once and exit) and `demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path as Path_
from typing import Any

from exporter import __version__, logsetup
from exporter.errors import ConfigError
from exporter.inventory.discover_cli import (
    add_directory_arguments,
    add_discover_arguments,
    settings_from_args,
    wants_directory,
)
from exporter.inventory.model import Inventory
from exporter.inventory.static import load_inventory
from exporter.plan.planner import Path, Vantage, parse_shard, plan, shard
from exporter.probes import registry

DEFAULT_PORT = 10135
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
#: checks this build can run; the planner leaves out catalogue rows whose check is not here
AVAILABLE_CHECKS = frozenset({"tcp", *registry.CHECKS})

log = logging.getLogger("exporter")


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:10135`, `127.0.0.1:10135`, `[::1]:10135` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--web.listen-address {value!r} is not host:port", fix="e.g. :10135 or [::1]:10135"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory", metavar="FILE", help="static inventory YAML (default: the demo)")
    parser.add_argument(
        "--source",
        default=None,
        help="this agent's identity, an inventory member's FQDN or name "
        "(default: this host's FQDN; a name outside the inventory makes an observer)",
    )
    parser.add_argument(
        "--connect-only",
        action="store_true",
        help="bare TCP connects only: no protocol conversations (DNS, Kerberos, LDAP, SMTP, health pages...) "
        "and no UDP paths (the demo always runs like this: its listeners speak no protocol)",
    )
    parser.add_argument(
        "--probe.ca-file",
        dest="probe_ca_file",
        metavar="FILE",
        help="CA to verify the targets' TLS certificates with (LDAPS, SMTP STARTTLS, HTTPS; default: the "
        "system trust store). Verification failures are reported, never fatal",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="probe only shard I of N of the paths (rendezvous hashing: several central probers split "
        "the targets, and adding one moves only its share)",
    )
    parser.add_argument(
        "--source-site",
        default=None,
        metavar="SITE",
        help="this agent's AD site, for an agent outside the inventory (members take theirs from it)",
    )
    parser.add_argument(
        "--vantage",
        choices=[v.value for v in Vantage],
        default=None,
        help="override where this agent stands (default: from --source's inventory entry)",
    )
    parser.add_argument("--timeout", type=_positive, default=2.0, help="seconds per attempt (default 2)")
    parser.add_argument(
        "--attempts", type=int, default=3, help="silent attempts before a path reads filtered (default 3)"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="probes in flight (default: from fd limit)"
    )
    parser.add_argument(
        "--enable-service",
        action="append",
        default=[],
        metavar="SERVICE",
        help="probe an optional client service too (pop3, pop3s, imap, imaps, um-callrouter-sip...)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _mesh_flags(parser: argparse.ArgumentParser) -> None:
    mesh = parser.add_argument_group("mesh (many agents adding up to the full pairwise picture)")
    mesh.add_argument(
        "--mesh",
        action="store_true",
        help="pull the other agents' paths into /matrix and /api/v1/mesh, and list them in /api/v1/sd",
    )
    mesh.add_argument("--mesh-port", type=int, default=None, help="the port agents listen on (default: ours)")
    mesh.add_argument(
        "--mesh-members",
        choices=["exchange", "all", "none"],
        default="exchange",
        help="which inventory members run an agent (default: the Exchange servers)",
    )
    mesh.add_argument(
        "--mesh-peer",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="an extra agent, e.g. a client zone: client-vlan1=http://10.9.0.5:10135",
    )
    mesh.add_argument("--mesh.scheme", dest="mesh_scheme", choices=["http", "https"], default="http")
    mesh.add_argument(
        "--mesh.ca-file",
        dest="mesh_ca_file",
        metavar="FILE",
        help="CA to verify the peers' TLS with (default: the system trust store)",
    )
    mesh.add_argument("--mesh.username", dest="mesh_username", help="basic-auth user for the peers' API")
    mesh.add_argument(
        "--mesh.password-file",
        dest="mesh_password_file",
        metavar="FILE",
        help="basic-auth password for the peers' API (or $EXFW_MESH_PASSWORD)",
    )
    mesh.add_argument(
        "--mesh.advertise-address",
        dest="mesh_advertise",
        metavar="HOST[:PORT]",
        help="how peers and Prometheus reach this agent (default: its inventory address)",
    )


def _mesh_settings(args: argparse.Namespace, listen_port: int) -> Any:
    from exporter.outputs.app import MeshSettings

    auth = None
    if args.mesh_username:
        password = os.environ.get("EXFW_MESH_PASSWORD", "")
        if args.mesh_password_file:
            try:
                password = Path_(args.mesh_password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"--mesh.password-file: {exc.strerror}", fix="check the path") from None
        auth = (args.mesh_username, password)
    return MeshSettings(
        enabled=args.mesh,
        port=args.mesh_port or listen_port,
        scheme=args.mesh_scheme,
        members=args.mesh_members,
        extra=tuple(args.mesh_peer),
        advertise=args.mesh_advertise or "",
        auth=auth,
        verify=args.mesh_ca_file or True,
    )


def _state_flags(parser: argparse.ArgumentParser, default_state: str | None) -> None:
    parser.add_argument(
        "--state-file",
        default=default_state,
        metavar="PATH",
        help="SQLite baseline of what each path has been (default: /var/lib/exchange-firewall-exporter/"
        "state.sqlite when writable, else the user's state directory; '' keeps it in memory)",
    )
    parser.add_argument(
        "--block-after",
        type=int,
        default=3,
        metavar="K",
        help="non-open probes in a row before a path is blocked (default 3)",
    )
    parser.add_argument(
        "--recover-after", type=int, default=1, metavar="N", help="open probes before it recovers (default 1)"
    )
    parser.add_argument(
        "--retention-days",
        type=_positive,
        default=30.0,
        help="a blocked path is 'newly blocked' when seen open within this many days (default 30)",
    )
    parser.add_argument(
        "--confirm-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="re-probe a path this soon after it stops (or starts) answering, instead of waiting an "
        "interval, so a change is confirmed in seconds (default 1; 0 disables)",
    )


def demo_break_default() -> float:
    from exporter.demo import BREAK_AFTER

    return BREAK_AFTER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange-firewall-exporter",
        description="Probe every network path an Exchange organisation needs and export the results "
        "to Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="probe continuously and serve /metrics (the default command)")
    _common(serve)
    serve.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help=f"address to serve on (default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--interval", type=_positive, default=30.0, help="seconds between probes of a path")
    add_directory_arguments(serve)
    _mesh_flags(serve)
    serve.add_argument(
        "--inventory-reload-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="check the --inventory file this often and re-plan when it changed (default 10; 0 disables); "
        "a file that no longer validates is reported and the running plan kept",
    )
    serve.add_argument(
        "--discovery-interval",
        type=_positive,
        default=900.0,
        metavar="SECONDS",
        help="re-read Active Directory this often (default 900); used with --ldap-url or --domain",
    )
    discover = sub.add_parser(
        "discover",
        help="read the organisation from Active Directory (a table, json, or an inventory file with "
        "--output yaml)",
    )
    add_discover_arguments(discover)
    demo = sub.add_parser("demo", help="serve the built-in demo organisation with real loopback listeners")
    _common(demo)
    demo.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN)
    demo.add_argument("--interval", type=_positive, default=15.0)
    demo.add_argument(
        "--demo-break-after",
        type=_positive,
        default=demo_break_default(),
        metavar="SECONDS",
        help="close one open listener after this long, to show a newly blocked path (default 60)",
    )
    for sub_parser, default_state in ((serve, None), (demo, "")):
        _state_flags(sub_parser, default_state)
        sub_parser.add_argument(
            "--web.api-rate-limit",
            dest="web_api_rate",
            type=_positive,
            default=20.0,
            metavar="PER_SECOND",
            help="API and page requests per second per client (bursts of three times that); /metrics and the "
            "health checks have their own budget (default 20)",
        )
        sub_parser.add_argument(
            "--web.config.file",
            dest="web_config_file",
            metavar="FILE",
            help="TLS and basic auth, in the Prometheus exporter-toolkit format (see the README)",
        )
    check = sub.add_parser("check", help="probe every planned path once and exit 0/1/2")
    _common(check)
    check.add_argument("--output", choices=["table", "json", "csv"], default="table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_list)
    logsetup.setup(args.log_level)
    try:
        if args.command == "discover":
            from exporter.inventory.discover_cli import run_discover

            return run_discover(args)
        if args.command == "check":
            return run_check(args)
        return run_serve(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def is_demo_source(args: argparse.Namespace) -> bool:
    """The built-in demo organisation is the inventory (no file, no directory)."""
    return args.command == "demo" or (not args.inventory and not wants_directory(args))


def _planner(args: argparse.Namespace, source: str) -> Callable[[Inventory], list[Path]]:
    vantage = Vantage(args.vantage) if args.vantage else None

    shard_of = parse_shard(args.shard) if args.shard else None

    def planner(inventory: Inventory) -> list[Path]:
        paths = plan(
            inventory,
            source,
            vantage=vantage,
            checks=AVAILABLE_CHECKS,
            connect_only=args.connect_only or is_demo_source(args),
            optional_services=frozenset(args.enable_service),
            source_site=args.source_site,
        )
        return shard(paths, *shard_of) if shard_of else paths

    return planner


def _inventory_and_plan(
    args: argparse.Namespace, demo: bool, discovered: Inventory | None = None
) -> tuple[Inventory, str, list[Path]]:
    from exporter import demo as demo_org

    if discovered is not None:
        inventory = discovered
        source = args.source or socket.getfqdn()
    elif demo or not args.inventory:
        inventory = demo_org.demo_inventory()
        source = args.source or demo_org.DEMO_SOURCE
    else:
        inventory = load_inventory(args.inventory)
        source = args.source or socket.getfqdn()
    if args.attempts < 1:
        raise ConfigError("--attempts must be at least 1", fix="use 3, as PortQry does")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1", fix="leave it unset to derive it")
    return inventory, source, _planner(args, source)(inventory)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from exporter import demo as demo_org
    from exporter.outputs.app import create_app
    from exporter.outputs.webconfig import BasicAuth, load_web_config
    from exporter.prober import Prober, ProbeSettings
    from exporter.state.baseline import Baseline, default_state_file
    from exporter.state.tracker import Tracker

    host, port = parse_listen_address(args.listen)
    web = load_web_config(args.web_config_file) if args.web_config_file else None
    refresher = None
    discovered = None
    if args.command == "serve" and not args.inventory and wants_directory(args):
        from exporter.inventory.ldap import discover
        from exporter.inventory.refresh import InventoryRefresher

        ldap_settings = settings_from_args(args)  # ConfigError (exit 2) before anything starts
        refresher = InventoryRefresher(lambda: discover(ldap_settings), interval=args.discovery_interval)
        refresher.refresh_once()
        # no inventory yet: start with none (the service says so) and keep trying
        discovered = refresher.inventory or Inventory("(discovery pending)", source="ldap")
        for warning in refresher.result.warnings if refresher.result else ():
            log.warning("discovery: %s", warning)
    is_demo = args.command == "demo" or (not args.inventory and discovered is None)
    inventory, source, paths = _inventory_and_plan(args, is_demo, discovered)
    listeners = None
    if is_demo:
        listeners = demo_org.DemoListeners(
            paths, break_after=getattr(args, "demo_break_after", demo_org.BREAK_AFTER)
        )
        listeners.start()
        log.info(
            "demo organisation: %d listeners on 127.0.10.0/24, %s:%d left closed on purpose",
            len(listeners.endpoints),
            *demo_org.CLOSED,
        )
    settings = ProbeSettings(args.interval, args.timeout, args.attempts, args.max_concurrency)
    state_file = default_state_file() if args.state_file is None else (args.state_file or None)
    store = Baseline(state_file)
    store.start()
    tracker = Tracker(
        store, k=args.block_after, recover=args.recover_after, retention=args.retention_days * 86400
    )
    log.info("baseline: %s", state_file or "in memory")
    prober = Prober(
        inventory,
        paths,
        settings,
        source=source,
        checks=registry.checks(cafile=args.probe_ca_file),
        tracker=tracker,
        confirm_delay=max(0.0, args.confirm_delay),
    )
    log.info(
        "source %s: %d paths to %d members, every %gs, up to %d in flight",
        source,
        len(paths),
        sum(1 for _ in inventory.members()),
        args.interval,
        prober.engine.limit,
    )
    prober.start()
    reloader = None
    if args.command == "serve" and args.inventory and args.inventory_reload_interval > 0:
        from exporter.service import FileReloader

        reloader = FileReloader(
            args.inventory, prober, _planner(args, source), load_inventory, args.inventory_reload_interval
        )
        reloader.start()
    discovery = None
    if refresher is not None:
        from exporter.service import DiscoveryLoop

        discovery = DiscoveryLoop(refresher, prober, _planner(args, source))
        discovery.start()
    mesh_settings = _mesh_settings(args, port) if args.command == "serve" else None

    def plan_for(inventory: Inventory, identity: str) -> list[Path]:
        return _planner(args, identity)(inventory)

    app: Any = create_app(
        prober,
        refresher=refresher,
        mesh_settings=mesh_settings,
        planner=plan_for,
        reloader=reloader,
        api_rate=args.web_api_rate,
    )
    tls_kwargs: dict[str, Any] = {}
    if web is not None:
        if web.basic_auth:
            app = BasicAuth(app, web.users)
        if web.tls is not None:
            tls_kwargs = web.tls.uvicorn_kwargs()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        **tls_kwargs,
    )
    if web is not None and web.tls is not None:
        config.load()
        assert config.ssl is not None
        config.ssl.minimum_version = web.tls.min_version
    server = _GracefulServer(config)
    log.info("listening on %s:%d", host, port)
    try:
        server.run()
    finally:
        if discovery is not None:
            discovery.stop()
        if reloader is not None:
            reloader.stop()
        prober.stop()
        store.close()
        if listeners is not None:
            listeners.stop()
    return 0


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its shutdown, which would kill us before our own cleanup
        (stopping the prober, flushing state) runs; here the signal only asks for a graceful exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


def _GracefulServer(config: Any) -> Any:
    return _graceful_server_class()(config)


def run_check(args: argparse.Namespace) -> int:
    from exporter import demo as demo_org
    from exporter.engine.scheduler import Engine
    from exporter.outputs.api import path_view
    from exporter.outputs.pathtable import PathTable
    from exporter.prober import new_loop, targets_of

    is_demo = not args.inventory
    inventory, source, paths = _inventory_and_plan(args, is_demo)
    listeners = None
    if is_demo:
        listeners = demo_org.DemoListeners(paths)
        listeners.start()
    table = PathTable(paths)
    engine = Engine(
        targets_of(paths),
        table,
        timeout=args.timeout,
        attempts=args.attempts,
        max_concurrency=args.max_concurrency,
        checks=registry.checks(cafile=args.probe_ca_file),
        once=True,
        tick=0.02,
        seed=source,
    )
    loop = new_loop()
    try:
        if args.output == "table" and sys.stderr.isatty():
            _run_with_progress(loop, engine, len(paths))
        else:
            loop.run_until_complete(engine.run())
    finally:
        loop.close()
        if listeners is not None:
            listeners.stop()
    rows = [path_view(path, result) for path, result in table.items()]
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["source"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows, source, inventory.organisation)
    failing = [r for r in rows if r["required"] and r["state"] != "open"]
    return 1 if failing else 0


def _run_with_progress(loop: asyncio.AbstractEventLoop, engine: Any, total: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("paths", total=total)

        async def watch() -> None:
            runner = asyncio.ensure_future(engine.run())
            while not runner.done():
                progress.update(task, completed=engine.stats.completed_paths)
                await asyncio.sleep(0.1)
            await runner

        loop.run_until_complete(watch())


_STYLE = {
    "open": "green",
    "refused": "red",
    "filtered": "red",
    "unreachable": "red",
    "dns_error": "yellow",
    "local_error": "yellow",
}


def _print_table(rows: list[dict[str, Any]], source: str, organisation: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_target.setdefault(row["target"], []).append(row)
    for target, group in by_target.items():
        first = group[0]
        bad = sum(1 for r in group if r["state"] != "open")
        table = Table(
            title=f"{target} ({first['target_role']}, site {first['target_site']}): "
            f"{len(group) - bad}/{len(group)} open",
            title_justify="left",
        )
        for column in ("port", "proto", "service", "kind", "required", "state", "evidence", "rtt ms"):
            table.add_column(column)
        for r in group:
            style = _STYLE.get(r["state"] or "", "")
            rtt = f"{r['rtt_seconds'] * 1000:.1f}" if r["rtt_seconds"] is not None else ""
            table.add_row(
                str(r["port"]),
                r["proto"],
                r["service"],
                r["kind"],
                "yes" if r["required"] else "no",
                f"[{style}]{r['state']}[/{style}]" if style else str(r["state"]),
                r["evidence"],
                rtt,
            )
        console.print(table)
    failing = [r for r in rows if r["required"] and r["state"] != "open"]
    verdict = "all required paths open" if not failing else f"{len(failing)} required path(s) NOT open"
    console.print(f"[bold]{organisation}[/bold] from {source}: {len(rows)} paths, {verdict}")


if __name__ == "__main__":
    sys.exit(main())
