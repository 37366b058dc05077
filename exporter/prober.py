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
from exporter.probes.outcome import Outcome, State
from exporter.state.baseline import Status
from exporter.state.tracker import Tracker

log = logging.getLogger(__name__)

EXPIRE_EVERY = 60.0


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


class _Recorder:
    """The engine's sink for one plan: hysteresis first, then the table (with the hysteresis view), and a
    quick confirmation probe when a path that was open stops answering."""

    def __init__(self, table: PathTable, tracker: Tracker | None, confirm_delay: float) -> None:
        self.table = table
        self.tracker = tracker
        self.confirm_delay = confirm_delay
        self.engine: Engine | None = None

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        tracker = self.tracker
        if tracker is None:
            self.table.record(index, outcome, wall)
            return
        tracker.observe(index, outcome, wall)
        status = tracker.view(index)
        self.table.record(index, outcome, wall, status)
        confirming = (
            status.status is Status.OPEN
            and outcome.state.is_block
            and status.consecutive_non_open < tracker.k
        ) or (status.status is Status.BLOCKED and outcome.state is State.OPEN)
        if confirming and self.engine is not None and self.confirm_delay > 0:
            self.engine.expedite(index, self.confirm_delay)


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
        tracker: Tracker | None = None,
        confirm_delay: float = 1.0,
    ) -> None:
        self.inventory = inventory
        self.source = source
        self.settings = settings
        self.checks = checks or {}
        self.tracker = tracker
        self.confirm_delay = confirm_delay
        self.stats = EngineStats()
        if tracker is not None:
            tracker.set_plan(paths)
        self.table = PathTable(paths)
        self.engine = self._engine_for(self.table)
        self.plan_changes = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Future[None] | None = None
        self.started = time.time()

    def _engine_for(self, table: PathTable) -> Engine:
        recorder = _Recorder(table, self.tracker, self.confirm_delay)
        engine = Engine(
            targets_of(table.paths),
            recorder,
            interval=self.settings.interval,
            timeout=self.settings.timeout,
            attempts=self.settings.attempts,
            max_concurrency=self.settings.max_concurrency,
            checks=self.checks,
            tick=self.settings.tick,
            seed=self.source,
            stats=self.stats,
        )
        recorder.engine = engine
        return engine

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
            loop.call_later(EXPIRE_EVERY, self._housekeeping)
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
            if self.tracker is not None:
                self.tracker.set_plan(table.paths)
            self.inventory, self.table, self.engine = inventory, table, engine
            self.plan_changes += 1
            self._runner = asyncio.get_running_loop().create_task(engine.run())

        if self._loop is None or self._thread is None or not self._thread.is_alive():
            if self.tracker is not None:
                self.tracker.set_plan(table.paths)
            self.inventory, self.table, self.engine = inventory, table, engine
            return
        asyncio.run_coroutine_threadsafe(swap(), self._loop).result(timeout)
        log.info("plan replaced: %d paths (%d kept with their results)", len(table), table.probed)

    def _housekeeping(self) -> None:
        """Age out paths that left the plan longer ago than the grace period."""
        if self.tracker is not None:
            try:
                self.tracker.expire()
            except Exception:
                log.exception("expiring departed paths failed")
        if self._loop is not None:
            self._loop.call_later(EXPIRE_EVERY, self._housekeeping)

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
