"""The prober thread: owns the probing event loop, the current plan and its result table.

Probing runs on its own thread and loop so that nothing the HTTP side does (a 100 MB scrape, a slow
client) delays a probe, and nothing a probe does blocks a scrape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.engine.scheduler import Check, Engine, EngineStats, Target
from exporter.inventory.model import Inventory
from exporter.outputs.pathtable import PathTable
from exporter.plan.planner import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval: float = 30.0
    timeout: float = 2.0
    attempts: int = 3
    max_concurrency: int | None = None
    tick: float = 0.05


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def targets_of(paths: Sequence[Path]) -> list[Target]:
    return [Target(p.address or p.target, p.port, p.check, p.target) for p in paths]


class Prober:
    """Start, stop, re-plan, and read the state of continuous probing."""

    def __init__(
        self,
        inventory: Inventory,
        paths: Sequence[Path],
        settings: ProbeSettings,
        *,
        source: str,
        checks: dict[str, Check] | None = None,
    ) -> None:
        self.inventory = inventory
        self.source = source
        self.settings = settings
        self.checks = checks or {}
        self.stats = EngineStats()
        self.table = PathTable(paths)
        self.engine = self._engine_for(self.table)
        self.plan_changes = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Future[None] | None = None
        self.started = time.time()

    def _engine_for(self, table: PathTable) -> Engine:
        return Engine(
            targets_of(table.paths),
            table,
            interval=self.settings.interval,
            timeout=self.settings.timeout,
            attempts=self.settings.attempts,
            max_concurrency=self.settings.max_concurrency,
            checks=self.checks,
            tick=self.settings.tick,
            seed=self.source,
            stats=self.stats,
        )

    @property
    def ready(self) -> bool:
        """True once every planned path has a result (carried over from an earlier plan or new)."""
        return self.table.probed >= len(self.table)

    def start(self) -> None:
        started = threading.Event()

        def main() -> None:
            loop = new_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._runner = loop.create_task(self.engine.run())
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="prober", daemon=True)
        self._thread.start()
        started.wait(5.0)

    def replace_plan(self, inventory: Inventory, paths: Sequence[Path], timeout: float = 10.0) -> None:
        """Swap in a new plan; results of paths that stay are kept, in-flight probes of the old plan
        are abandoned (never reported). Safe to call from any thread."""
        table = PathTable(paths, previous=self.table)
        engine = self._engine_for(table)

        async def swap() -> None:
            old_engine, old_runner = self.engine, self._runner
            old_engine.stop()
            if old_runner is not None:
                await asyncio.gather(old_runner, return_exceptions=True)
            self.inventory, self.table, self.engine = inventory, table, engine
            self.plan_changes += 1
            self._runner = asyncio.get_running_loop().create_task(engine.run())

        if self._loop is None or self._thread is None or not self._thread.is_alive():
            self.inventory, self.table, self.engine = inventory, table, engine
            return
        asyncio.run_coroutine_threadsafe(swap(), self._loop).result(timeout)
        log.info("plan replaced: %d paths (%d kept with their results)", len(table), table.probed)

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def drain() -> None:
            self.engine.stop()
            if self._runner is not None:
                await asyncio.gather(self._runner, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(drain(), loop)
        thread.join(timeout)
