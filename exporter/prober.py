"""The prober thread: owns the probing event loop, the current plan and its result table.

Probing runs on its own thread and loop so that nothing the HTTP side does (a 100 MB scrape, a slow
client) delays a probe, and nothing a probe does blocks a scrape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.engine.scheduler import Check, Engine, EngineStats, Target
from exporter.inventory.model import Inventory
from exporter.outputs.pathtable import PathTable
from exporter.plan.planner import Path
from exporter.probes.outcome import Outcome, State
from exporter.state.baseline import Status
from exporter.state.tracker import Tracker, Verdict

log = logging.getLogger(__name__)

EXPIRE_EVERY = 60.0
VERDICT_EVERY = 5.0


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

    def __init__(
        self,
        table: PathTable,
        tracker: Tracker | None,
        confirm_delay: float,
        on_epm: Callable[[Path, Outcome], None] | None = None,
    ) -> None:
        self.table = table
        self.tracker = tracker
        self.confirm_delay = confirm_delay
        self.on_epm = on_epm
        self.engine: Engine | None = None

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        if self.on_epm is not None and self.table.paths[index].check == "rpc-epm":
            self.on_epm(self.table.paths[index], outcome)
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


def dynamic_rpc_paths(epm: Path, outcome: Outcome) -> tuple[Path, ...] | None:
    """The dynamic RPC ports the endpoint mapper registered, each as a path of its own (service
    "rpc:<interface>", a bare connect); None when the mapper did not answer properly (keep what we had)."""
    details = dict(outcome.details)
    if outcome.state is not State.OPEN or details.get("protocol") != "ok":
        return None
    found = []
    for key, value in outcome.details:
        if key.startswith("rpc:"):
            for port in value.split(","):
                if port.isdigit() and 0 < int(port) < 65536 and int(port) != epm.port:
                    found.append(dataclasses.replace(epm, port=int(port), service=key, check="tcp"))
    return tuple(sorted(found, key=lambda p: (p.service, p.port)))


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
        self.base_paths = list(paths)
        self.dynamic: dict[str, tuple[Path, ...]] = {}  # target -> its endpoint mapper's dynamic ports
        if tracker is not None:
            tracker.set_plan(paths)
        self.table = PathTable(paths)
        self._seed(self.table)
        self.engine = self._engine_for(self.table)
        self.plan_changes = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Future[None] | None = None
        self.started = time.time()
        self._verdicts: dict[str, Verdict] | None = None
        self._stopped = threading.Event()

    def _seed(self, table: PathTable) -> None:
        if self.tracker is not None:
            for index in range(len(table)):
                table.seed(index, self.tracker.view(index))

    def _engine_for(self, table: PathTable) -> Engine:
        recorder = _Recorder(table, self.tracker, self.confirm_delay, self._on_epm)
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
        threading.Thread(target=self._verdict_loop, name="verdicts", daemon=True).start()
        started.wait(5.0)

    def replace_plan(self, inventory: Inventory, paths: Sequence[Path], timeout: float = 10.0) -> None:
        """Swap in a new plan; results of paths that stay are kept, in-flight probes of the old plan
        are abandoned (never reported). Safe to call from any thread."""
        self.base_paths = list(paths)
        self._replan(inventory, timeout)
        log.info("plan replaced: %d paths (%d kept with their results)", len(self.table), self.table.probed)

    def _full_plan(self) -> list[Path]:
        mappers = {p.target.lower() for p in self.base_paths if p.check == "rpc-epm"}
        extra = [p for target, found in sorted(self.dynamic.items()) if target in mappers for p in found]
        return self.base_paths + extra

    def _on_epm(self, epm: Path, outcome: Outcome) -> None:
        """An endpoint mapper answered: when its dynamic ports changed, re-plan (on the prober's loop)."""
        found = dynamic_rpc_paths(epm, outcome)
        key = epm.target.lower()
        if found is None or self.dynamic.get(key) == found:
            return
        self.dynamic[key] = found
        log.info("%s: dynamic RPC ports %s", epm.target, ", ".join(f"{p.service}:{p.port}" for p in found))
        self._replan(self.inventory, 10.0)

    def _replan(self, inventory: Inventory, timeout: float) -> None:
        table = PathTable(self._full_plan(), previous=self.table)
        engine = self._engine_for(table)

        async def swap() -> None:
            old_engine, old_runner = self.engine, self._runner
            old_engine.stop()
            if old_runner is not None and old_runner is not asyncio.current_task():
                await asyncio.gather(old_runner, return_exceptions=True)
            if self.tracker is not None:
                self.tracker.set_plan(table.paths)
                self._seed(table)
            self.inventory, self.table, self.engine = inventory, table, engine
            self.plan_changes += 1
            self._runner = asyncio.get_running_loop().create_task(engine.run())

        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            if self.tracker is not None:
                self.tracker.set_plan(table.paths)
                self._seed(table)
            self.inventory, self.table, self.engine = inventory, table, engine
            return
        if threading.current_thread() is self._thread:
            loop.create_task(swap())  # called from a probe's result: never wait on our own loop
            return
        asyncio.run_coroutine_threadsafe(swap(), loop).result(timeout)

    def verdicts(self) -> dict[str, Verdict]:
        """The supportability verdicts, recomputed every VERDICT_EVERY seconds on a thread of their own
        (they are O(paths): a scrape must never wait for them)."""
        cached = self._verdicts
        if cached is None and self.tracker is not None:
            cached = self._verdicts = self.tracker.verdicts()
        return cached or {}

    def _verdict_loop(self) -> None:
        while not self._stopped.wait(VERDICT_EVERY):
            if self.tracker is not None:
                try:
                    self._verdicts = self.tracker.verdicts()
                except Exception:
                    log.exception("computing the verdicts failed")

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
        self._stopped.set()
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
