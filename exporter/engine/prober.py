"""The prober thread: owns the probing event loop, runs the engine over the current plan, swaps plans.

Probing runs on its own thread and loop so that nothing the HTTP side does (a 100 MB scrape, a slow
client) delays a probe, and nothing a probe does blocks a scrape. What becomes of each result is the
sink's business (hysteresis, the results table, the exposition): the prober only tells it when a plan
begins and hands it every outcome.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.engine.host import new_loop, settle_heap
from exporter.engine.scheduler import Engine, EngineStats
from exporter.inventory.model import Inventory
from exporter.plan.planner import NetworkPath, dynamic_rpc_paths
from exporter.probes.contract import Check, Target
from exporter.probes.outcome import Outcome, State
from exporter.threads import name_this_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval: float = 30.0
    timeout: float = 2.0
    attempts: int = 3
    max_concurrency: int | None = None
    tick: float = 0.05
    confirm_delay: float = 1.0  # re-probe a path this soon after it changes (0: never)
    source_address: str = ""  # every probe socket binds to this local address first ("" the OS chooses)


class PlanSink(Protocol):
    """Where the prober's results go: told when a plan begins, then given every outcome by index."""

    def begin_plan(self, paths: Sequence[NetworkPath]) -> None:
        """`paths` is the plan from now on; later `record(index, ...)` calls index into it."""

    def record(self, index: int, outcome: Outcome, wall: float) -> bool | None:
        """True asks for a quick confirmation probe of the path."""


def targets_of(paths: Sequence[NetworkPath], local: str = "") -> list[Target]:
    """What the engine probes for `paths`, from the source address `local` ("" any)."""
    return [Target(p.address or p.target, p.port, p.check, p.target, p.family, local) for p in paths]


class _PlanRun:
    """The engine's sink for one plan: endpoint-mapper answers feed re-planning, the rest goes on."""

    def __init__(self, prober: Prober, paths: list[NetworkPath]) -> None:
        self.prober = prober
        self.paths = paths
        self.mappers = frozenset(i for i, p in enumerate(paths) if p.check == "rpc-epm")

    def record(self, index: int, outcome: Outcome, wall: float) -> bool | None:
        if index in self.mappers:
            self.prober._on_epm(self.paths[index], outcome)
        return self.prober.sink.record(index, outcome, wall)


class Prober:
    """Start, stop, re-plan, and read the progress of continuous probing."""

    def __init__(
        self,
        inventory: Inventory,
        paths: Sequence[NetworkPath],
        settings: ProbeSettings,
        *,
        source: str,
        sink: PlanSink,
        checks: dict[str, Check] | None = None,
    ) -> None:
        self.inventory = inventory
        self.source = source
        self.settings = settings
        self.checks = checks or {}
        self.sink = sink
        self.stats = EngineStats()
        self.base_paths = list(paths)
        self.dynamic: dict[str, tuple[NetworkPath, ...]] = {}  # target -> its mapper's dynamic ports
        self.paths: list[NetworkPath] = self._full_plan()
        sink.begin_plan(self.paths)
        self.engine = self._engine_for(self.paths)
        self.plan_changes = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Future[None] | None = None
        self.started = time.time()

    def _engine_for(self, paths: list[NetworkPath]) -> Engine:
        return Engine(
            targets_of(paths, self.settings.source_address),
            _PlanRun(self, paths),
            interval=self.settings.interval,
            timeout=self.settings.timeout,
            attempts=self.settings.attempts,
            max_concurrency=self.settings.max_concurrency,
            checks=self.checks,
            tick=self.settings.tick,
            seed=self.source,
            stats=self.stats,
            confirm_delay=self.settings.confirm_delay,
        )

    @property
    def concurrency_limit(self) -> int:
        return self.engine.limit

    def start(self) -> None:
        started = threading.Event()

        def main() -> None:
            loop = new_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            name_this_thread("ef-prober")
            settle_heap()
            self._runner = loop.create_task(self.engine.run())
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="prober", daemon=True)
        self._thread.start()
        started.wait(5.0)

    def replace_plan(self, inventory: Inventory, paths: Sequence[NetworkPath], timeout: float = 10.0) -> None:
        """Swap in a new plan; results of paths that stay are kept (the sink's business), in-flight probes
        of the old plan are abandoned (never reported). Safe to call from any thread."""
        self.base_paths = list(paths)
        self._replan(inventory, timeout)
        log.info("plan replaced: %d paths", len(self.paths))

    def _full_plan(self) -> list[NetworkPath]:
        mappers = {p.target.lower() for p in self.base_paths if p.check == "rpc-epm"}
        extra = [p for target, found in sorted(self.dynamic.items()) if target in mappers for p in found]
        return self.base_paths + extra

    def _on_epm(self, mapper: NetworkPath, outcome: Outcome) -> None:
        """An endpoint mapper answered: when its dynamic ports changed, re-plan (on the prober's loop).
        A mapper that did not answer properly keeps the ports it gave before."""
        if outcome.state is not State.OPEN or not outcome.protocol_ok:
            return
        found = dynamic_rpc_paths(mapper, outcome.endpoints)
        key = mapper.target.lower()
        if self.dynamic.get(key) == found:
            return
        self.dynamic[key] = found
        log.info("%s: dynamic RPC ports %s", mapper.target, ", ".join(f"{p.service}:{p.port}" for p in found))
        self._replan(self.inventory, 10.0)

    def _replan(self, inventory: Inventory, timeout: float) -> None:
        paths = self._full_plan()
        engine = self._engine_for(paths)

        def install() -> None:
            self.sink.begin_plan(paths)
            self.inventory, self.paths, self.engine = inventory, paths, engine

        async def swap() -> None:
            old_engine, old_runner = self.engine, self._runner
            old_engine.stop()
            if old_runner is not None and old_runner is not asyncio.current_task():
                await asyncio.gather(old_runner, return_exceptions=True)
            install()
            settle_heap()
            self.plan_changes += 1
            self._runner = asyncio.get_running_loop().create_task(engine.run())

        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            install()
            return
        if threading.current_thread() is self._thread:
            loop.create_task(swap())  # called from a probe's result: never wait on our own loop
            return
        asyncio.run_coroutine_threadsafe(swap(), loop).result(timeout)

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
