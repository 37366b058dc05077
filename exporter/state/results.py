"""The live results table: what each path of the current plan last did, and its hysteresis status.

One table per plan, index-aligned with the plan's paths (the engine reports by index). A new plan's table
carries over the results of the paths it keeps. Listeners (the Prometheus exposition) are told of every
result as it is recorded, so what they derive from it is never rebuilt from the whole table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome
from exporter.state.status import PathStatus, Status


@dataclass(frozen=True, slots=True)
class PathResult:
    """The last outcome of one path, when it was recorded, and the hysteresis view at that moment."""

    outcome: Outcome
    wall: float  # unix time the outcome was recorded
    status: PathStatus | None = None  # None when no tracker runs (`check`)


class ResultListener(Protocol):
    """Something that follows the results as they come (the exposition). Called on the prober's thread."""

    def attach(self, table: ResultTable) -> None:
        """A new plan's table replaces the previous one (it already holds the carried-over results)."""

    def recorded(self, index: int, result: PathResult) -> None:
        """Path `index` of the attached table has a new result."""

    def seeded(self, index: int, status: PathStatus) -> None:
        """Path `index` has a remembered status (from the baseline) and no result yet in this process."""


class ResultTable:
    """Results for a fixed list of paths (a new plan makes a new table)."""

    def __init__(self, paths: Sequence[NetworkPath], previous: ResultTable | None = None) -> None:
        self.paths = list(paths)
        self._results: list[PathResult | None] = [None] * len(self.paths)
        #: remembered statuses of paths not yet probed in this process (exported until their first probe)
        self.seeds: dict[int, PathStatus] = {}
        self.probed = 0  # paths with at least one result
        self.kinds = Counter(p.kind.value for p in self.paths)  # paths by kind, for exchange_paths
        if previous is not None:
            carried = {p.key: r for p, r in previous.items() if r is not None}
            for index, path in enumerate(self.paths):
                old = carried.get(path.key)
                if old is not None:
                    self._results[index] = old
                    self.probed += 1

    def __len__(self) -> int:
        return len(self.paths)

    def record(
        self, index: int, outcome: Outcome, wall: float, status: PathStatus | None = None
    ) -> PathResult:
        result = PathResult(outcome, wall, status)
        if self._results[index] is None:
            self.probed += 1
            self.seeds.pop(index, None)
        self._results[index] = result
        return result

    def seed(self, index: int, status: PathStatus) -> bool:
        """Remember a path's status from the baseline until it is probed; False when there is nothing to
        show (pending) or the path already has a result."""
        if status.status is Status.PENDING or self._results[index] is not None:
            return False
        self.seeds[index] = status
        return True

    def result(self, index: int) -> PathResult | None:
        return self._results[index]

    def results(self) -> list[PathResult | None]:
        """A copy of the current results, index-aligned with `paths`."""
        return list(self._results)

    def items(self) -> Iterator[tuple[NetworkPath, PathResult | None]]:
        return zip(self.paths, self.results(), strict=True)
