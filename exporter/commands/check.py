"""`check`: probe every planned path once, print a table (or JSON, CSV) and exit 0/1/2."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from typing import Any

from exporter import demo
from exporter.compose import inventory_and_plan
from exporter.engine.host import new_loop
from exporter.engine.locator import Locator
from exporter.engine.prober import targets_of
from exporter.engine.scheduler import Engine
from exporter.outputs.api import path_view
from exporter.plan.planner import NetworkPath, dynamic_rpc_paths
from exporter.probes import registry
from exporter.probes.locate import Location
from exporter.probes.outcome import Outcome
from exporter.settings import Settings
from exporter.state.recorder import Recorder


def run_check(settings: Settings) -> int:
    _watcher, inventory, source, paths = inventory_and_plan(settings)
    listeners = None
    if settings.inventory.demo:
        listeners = demo.DemoListeners(paths)
        listeners.start()
    recorder = Recorder()
    probe = settings.probe
    checks = registry.checks(cafile=settings.probe_ca_file)

    def one_pass(planned: list[NetworkPath], offset: int = 0) -> None:
        """Probe `planned`, recorded as paths offset.. of the recorder's current plan."""

        class Shifted:
            def record(self, index: int, outcome: Outcome, wall: float) -> bool:
                return recorder.record(offset + index, outcome, wall)

        engine = Engine(
            targets_of(planned, probe.source_address),
            Shifted(),
            timeout=probe.timeout,
            attempts=probe.attempts,
            max_concurrency=probe.max_concurrency,
            checks=checks,
            once=True,
            tick=probe.tick,
            seed=source,
        )
        if settings.output == "table" and sys.stderr.isatty():
            _run_with_progress(loop, engine, len(planned))
        else:
            loop.run_until_complete(engine.run())

    loop = new_loop()
    try:
        recorder.begin_plan(paths)
        one_pass(paths)
        # the endpoint mappers' dynamic ports, probed right after (as `serve` does): the classic break is
        # 135 open and the dynamic range blocked
        dynamic = [
            found
            for path, result in recorder.table.items()
            if path.check == "rpc-epm" and result is not None and result.outcome.protocol_ok
            for found in dynamic_rpc_paths(path, result.outcome.endpoints)
        ]
        if dynamic:
            recorder.begin_plan([*paths, *dynamic])  # the first pass's results are carried over
            one_pass(dynamic, offset=len(paths))
        locations = loop.run_until_complete(_locate_failing(settings, recorder))
    finally:
        loop.close()
        if listeners is not None:
            listeners.stop()
    rows = [path_view(path, result, locations.get(path.key)) for path, result in recorder.table.items()]
    if settings.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif settings.output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["source"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows, source, inventory.organisation)
    failing = [r for r in rows if r["required"] and r["state"] != "open"]
    return 1 if failing else 0


MAX_LOCATED = 64


async def _locate_failing(settings: Settings, recorder: Recorder) -> dict[tuple[str | int, ...], Location]:
    """Where each required path that is not open is blocked (the first MAX_LOCATED), so the one-shot run
    after a firewall change names the device."""
    if not settings.locate_max_hops:
        return {}
    locator = Locator(
        max_hops=settings.locate_max_hops,
        timeout=min(settings.probe.timeout, 2.0),
        open_port=recorder.open_port,
        local=settings.probe.source_address,
    )
    failing = [
        (path, result.outcome.state)
        for path, result in recorder.table.items()
        if path.required and result is not None and result.outcome.state.is_block
    ][:MAX_LOCATED]
    found = await asyncio.gather(*(locator.locate(path, state) for path, state in failing))
    return {
        path.key: where for (path, _state), where in zip(failing, found, strict=True) if where is not None
    }


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
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console()
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_target.setdefault(row["target"], []).append(row)
    for target, group in by_target.items():
        first = group[0]
        bad = sum(1 for r in group if r["state"] != "open")
        table = Table(
            # names and evidence come from the directory and from peers: text, never rich markup
            title=Text(
                f"{target} ({first['target_role']}, site {first['target_site']}): "
                f"{len(group) - bad}/{len(group)} open"
            ),
            title_justify="left",
        )
        for column in ("port", "proto", "service", "kind", "required", "state", "evidence", "rtt ms"):
            table.add_column(column)
        for r in group:
            style = _STYLE.get(r["state"] or "", "")
            rtt = f"{r['rtt_seconds'] * 1000:.1f}" if r["rtt_seconds"] is not None else ""
            evidence = str(r["evidence"])
            if r.get("location"):  # which device, how many hops away
                evidence += f"; where: {r['location']['how']}"
            table.add_row(
                str(r["port"]) + (" (IPv6)" if r.get("family") == "ipv6" else ""),
                r["proto"],
                r["service"],
                r["kind"],
                "yes" if r["required"] else "no",
                Text(str(r["state"]), style=style),
                Text(evidence),
                rtt,
            )
        console.print(table)
    failing = [r for r in rows if r["required"] and r["state"] != "open"]
    verdict = "all required paths open" if not failing else f"{len(failing)} required path(s) NOT open"
    console.print(f"[bold]{escape(organisation)}[/bold] from {escape(source)}: {len(rows)} paths, {verdict}")
