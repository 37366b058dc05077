"""The live results table: what each path of the current plan last did, and its hysteresis status.

One table per plan, index-aligned with the plan's paths (the engine reports by index). A probe writes two
slots in place: the path's Outcome (the object the probe returned) and the time it was recorded; the
hysteresis status lives in the tracker's StatusColumns of the same plan. A reader gets a PathResult made
when it asks. A new plan's table carries over the results of the paths it keeps. Listeners (the
Prometheus exposition) are told which parts of a path changed as each result is recorded, and read the
values themselves from a `snapshot()` when they need them.
"""

from __future__ import annotations

import threading
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome
from exporter.state.status import (
    CHANGED_DETAILS,
    CHANGED_LAST_OPEN,
    CHANGED_STATE,
    CHANGED_STATUS,
    PathStatus,
    StatusColumns,
)


@dataclass(frozen=True, slots=True)
class PathResult:
    """The last outcome of one path, when it was recorded, and its hysteresis record as it is read."""

    outcome: Outcome
    wall: float  # unix time the outcome was recorded
    status: PathStatus | None = None  # None when no tracker runs (`check`)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The table's columns copied at one moment: a path's outcome and status always belong together."""

    outcomes: list[Outcome | None]
    wall: array[float]
    status: bytes | None  # the StatusColumns slots the exposition reads; None without a tracker
    classification: bytes | None
    since: array[float] | None
    last_open: array[float] | None


class ResultListener(Protocol):
    """Something that follows the results as they come (the exposition). Called on the prober's thread."""

    def attach(self, table: ResultTable) -> None:
        """A new plan's table replaces the previous one (it already holds the carried-over results)."""

    def recorded(self, index: int, changed: int) -> None:
        """Path `index` of the attached table has a new result; `changed` is a mask of CHANGED_* bits."""


def changes(previous: Outcome | None, outcome: Outcome) -> int:
    """The CHANGED_* bits a new outcome makes by itself (the tracker adds the status ones)."""
    if previous is None:  # its first result here: every line of the path may appear
        return CHANGED_STATE | CHANGED_DETAILS | CHANGED_STATUS | CHANGED_LAST_OPEN
    changed = 0 if previous.state is outcome.state else CHANGED_STATE
    if (
        previous.protocol_ok is not outcome.protocol_ok
        or previous.cert_expiry != outcome.cert_expiry
        or previous.subchecks != outcome.subchecks
    ):
        changed |= CHANGED_DETAILS
    return changed


class ResultTable:
    """Results for a fixed list of paths (a new plan makes a new table)."""

    def __init__(
        self,
        paths: Sequence[NetworkPath],
        previous: ResultTable | None = None,
        statuses: StatusColumns | None = None,
    ) -> None:
        self.paths = list(paths)
        n = len(self.paths)
        self.outcomes: list[Outcome | None] = [None] * n
        self.wall = array("d", [0.0]) * n
        #: the tracker's records of the same plan (index-aligned), or None when no tracker runs
        self.statuses = statuses
        self.probed = 0  # paths with at least one result
        self.kinds = Counter(p.kind.value for p in self.paths)  # paths by kind, for exchange_paths
        #: held while a path's outcome and status are written and its listeners told (by the recorder),
        #: or copied (snapshot); a new plan's table keeps the previous one's, as they may share statuses
        self.lock: threading.Lock = previous.lock if previous is not None else threading.Lock()
        if previous is not None:
            carried = {
                p.key: i
                for i, (p, outcome) in enumerate(zip(previous.paths, previous.outcomes, strict=True))
                if outcome
            }
            for index, path in enumerate(self.paths):
                old = carried.get(path.key)
                if old is not None:
                    self.outcomes[index] = previous.outcomes[old]
                    self.wall[index] = previous.wall[old]
                    self.probed += 1

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, index: int, outcome: Outcome, wall: float) -> Outcome | None:
        """Store path `index`'s outcome; returns the one it replaces. Callers that also write the
        path's status hold `lock` around both."""
        previous = self.outcomes[index]
        if previous is None:
            self.probed += 1
        self.outcomes[index] = outcome
        self.wall[index] = wall
        return previous

    def result(self, index: int) -> PathResult | None:
        outcome = self.outcomes[index]
        if outcome is None:
            return None
        with self.lock:
            outcome, wall = self.outcomes[index], self.wall[index]
            status = self.statuses.record(index) if self.statuses is not None else None
        assert outcome is not None
        return PathResult(outcome, wall, status)

    def results(self) -> list[PathResult | None]:
        """The current results, index-aligned with `paths`."""
        return [result for _path, result in self.items()]

    def items(self) -> Iterator[tuple[NetworkPath, PathResult | None]]:
        """Every path with its result, made a block at a time under the lock (whole records; the prober
        waits a millisecond at most)."""
        outcomes, wall, statuses = self.outcomes, self.wall, self.statuses
        for start in range(0, len(self.paths), 1024):
            stop = min(start + 1024, len(self.paths))
            with self.lock:
                block = [
                    (
                        self.paths[i],
                        PathResult(o, wall[i], statuses.record(i) if statuses is not None else None)
                        if (o := outcomes[i]) is not None
                        else None,
                    )
                    for i in range(start, stop)
                ]
            yield from block

    def snapshot(self) -> Snapshot:
        """Every column a scrape renders, copied under the lock (a few memcpy: a millisecond or two at
        100k paths), so one path's lines never mix two probes."""
        with self.lock:
            return self.copy_columns()

    def copy_columns(self) -> Snapshot:
        """snapshot() for a caller that holds `lock` (and copies something of its own at the same moment)."""
        statuses = self.statuses
        if statuses is None:
            return Snapshot(self.outcomes[:], self.wall[:], None, None, None, None)
        return Snapshot(
            self.outcomes[:],
            self.wall[:],
            bytes(statuses.status),
            bytes(statuses.classification),
            statuses.since[:],
            statuses.last_open[:],
        )
