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
    """Start, stop, and read the state of continuous probing of one plan."""

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
        self.table = PathTable(paths)
        self.checks = checks or {}
        self.engine = Engine(
            targets_of(paths),
            self.table,
            interval=settings.interval,
            timeout=settings.timeout,
            attempts=settings.attempts,
            max_concurrency=settings.max_concurrency,
            checks=self.checks,
            tick=settings.tick,
            seed=source,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = time.time()

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    @property
    def ready(self) -> bool:
        """True once every planned path has been probed at least once."""
        return self.engine.stats.completed_paths >= len(self.table)

    def start(self) -> None:
        started = threading.Event()

        def main() -> None:
            loop = new_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            started.set()
            try:
                loop.run_until_complete(self.engine.run())
            except Exception:
                log.exception("the prober loop stopped on an error")
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="prober", daemon=True)
        self._thread.start()
        started.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.engine.stop)
            self._thread.join(timeout)
