"""Command line: `serve` (the default), `check` (probe once and exit) and `demo`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path as Path_
from typing import Any

from exporter import logsetup
from exporter.errors import ConfigError
from exporter.flags import build_parser, parse_listen_address
from exporter.inventory.discover_cli import (
    settings_from_args,
    wants_directory,
)
from exporter.inventory.model import Inventory
from exporter.inventory.static import load_inventory
from exporter.plan.planner import Path, Vantage, parse_shard, plan, shard
from exporter.probes import registry

#: checks this build can run; the planner leaves out catalogue rows whose check is not here
AVAILABLE_CHECKS = frozenset({"tcp", *registry.CHECKS})

log = logging.getLogger("exporter")


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
            from exporter.check_cli import run_check

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


def inventory_and_plan(
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
    inventory, source, paths = inventory_and_plan(args, is_demo, discovered)
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


if __name__ == "__main__":
    sys.exit(main())
