"""Where probe results land: hysteresis first, then the results table, then every listener (the exposition).

`Recorder` is the prober's sink (`begin_plan`, `record`); `Upkeep` is the state's own background work
(verdicts recomputed every few seconds, departed paths aged out), so that neither a scrape nor a probe
ever waits for an O(paths) pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from exporter.engine.locator import Locator
from exporter.plan.planner import NetworkPath
from exporter.probes.locate import Location
from exporter.probes.outcome import Outcome, State
from exporter.state.results import (
    ResultListener,
    ResultTable,
    changes,
)
from exporter.state.status import BLOCKED, CHANGED_STATUS, NOT_LISTENING, OPEN
from exporter.state.tracker import Tracker, Verdict
from exporter.threads import name_this_thread

log = logging.getLogger(__name__)

EXPIRE_EVERY = 60.0
OPEN_PORTS_FOR = 10.0  # seconds an index of the targets' open ports is reused for locating
VERDICT_EVERY = 5.0


class Recorder:
    """The sink of one agent's probing. Called on the prober's thread; readers use `table`."""

    def __init__(
        self,
        tracker: Tracker | None = None,
        listeners: Sequence[ResultListener] = (),
        locator: Locator | None = None,
    ) -> None:
        self.tracker = tracker
        self.listeners = tuple(listeners)
        self.locator = locator
        self.table = ResultTable([])
        self._open_ports: tuple[float, dict[tuple[str, str, str], int]] | None = None
        if locator is not None:
            locator.open_port = self.open_port
            locator.on_located = self._located

    def begin_plan(self, paths: Sequence[NetworkPath]) -> None:
        """A new plan: its table carries the results of the paths it keeps; paths never probed in this
        process show their remembered status (so a restart does not make a blocked path's series vanish
        and its page resolve and fire again)."""
        tracker = self.tracker
        statuses = None
        if tracker is not None:
            tracker.set_plan(paths)
            statuses = tracker.columns
        table = ResultTable(paths, previous=self.table, statuses=statuses)
        for listener in self.listeners:
            listener.attach(table)
        self.table = table

    def record(self, index: int, outcome: Outcome, wall: float) -> bool:
        """Fold one outcome in; True when the path should be confirmed soon (it just stopped answering,
        or a blocked path answered)."""
        tracker, table = self.tracker, self.table
        state = outcome.state
        with table.lock:
            changed = changes(table.record(index, outcome, wall), outcome)
            if tracker is not None:
                changed |= tracker.observe_at(index, outcome, wall)
            for listener in self.listeners:  # under the lock: a scrape sees values and versions together
                listener.recorded(index, changed)
        if tracker is None:
            return False
        c = tracker.columns
        status = c.status[index]
        locator = self.locator
        if locator is not None:
            if status == BLOCKED and state.is_block:
                # a port nobody listens on is located once (a device's reset there is a violation);
                # a block by the network again every `every` while it lasts
                locator.request(table.paths[index], state, again=c.classification[index] != NOT_LISTENING)
            elif status == OPEN:
                locator.forget(table.paths[index])
        return (status == OPEN and state.is_block and c.non_open[index] < tracker.k) or (
            status == BLOCKED and state is State.OPEN
        )

    def open_port(self, path: NetworkPath) -> int | None:
        """A TCP port of the same target (and family) that answered last: its distance in hops. One pass
        over the table indexes every target's, reused for OPEN_PORTS_FOR seconds (a burst of locations
        after a firewall change costs one pass, not one a path)."""
        now = time.monotonic()
        if self._open_ports is None or now - self._open_ports[0] > OPEN_PORTS_FOR:
            ports: dict[tuple[str, str, str], int] = {}
            table = self.table
            for other, outcome in zip(table.paths, table.outcomes[:], strict=True):
                if outcome is not None and outcome.state is State.OPEN and other.proto == "tcp":
                    ports.setdefault((other.target, other.family, other.endpoint), other.port)
            self._open_ports = (now, ports)
        return self._open_ports[1].get((path.target, path.family, path.endpoint))

    def _located(self, path: NetworkPath, location: Location) -> None:
        """A device in the path reset it: not a port nobody listens on, but a firewall (a violation)."""
        if location.by_device and self.tracker is not None:
            table = self.table
            with table.lock:
                index = self.tracker.answered_by_device(path)
                if index is not None and index < len(table) and table.paths[index].key == path.key:
                    for listener in self.listeners:
                        listener.recorded(index, CHANGED_STATUS)

    @property
    def ready(self) -> bool:
        """True once every planned path has a result (carried over from an earlier plan or new)."""
        table = self.table
        return table.probed >= len(table)


class Upkeep:
    """Verdicts recomputed every VERDICT_EVERY seconds when something they read changed (an O(paths) pass
    that a steady organisation no longer pays every 5 s), and departed paths expired every EXPIRE_EVERY,
    on a thread of their own."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._verdicts: dict[str, Verdict] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def verdicts(self) -> dict[str, Verdict]:
        """The last computed verdict of each source (computed now if none was yet)."""
        cached = self._verdicts
        if cached is None:
            cached = self._verdicts = self.tracker.verdicts()
        return cached

    def _run(self) -> None:
        name_this_thread("ef-upkeep")
        since_expiry = 0.0
        computed = None  # the tracker's generation the cached verdicts were computed at
        while not self._stopped.wait(VERDICT_EVERY):
            generation = self.tracker.generation  # read first: a change while computing is seen next time
            if generation != computed or self._verdicts is None:
                try:
                    self._verdicts = self.tracker.verdicts()
                    computed = generation
                except Exception:
                    log.exception("computing the verdicts failed")
            since_expiry += VERDICT_EVERY
            if since_expiry >= EXPIRE_EVERY:
                since_expiry = 0.0
                try:
                    self.tracker.expire()
                except Exception:
                    log.exception("expiring departed paths failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5.0)
