"""What the outputs may read of a running agent: a small read-only interface, never the concrete parts.

The composition root (`exporter.compose`) provides it; an output (the metrics, the API, the matrix page)
depends on nothing else, so a new output needs no change to how the agent is put together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from exporter.engine.scheduler import EngineStats
from exporter.inventory.model import Inventory
from exporter.probes.locate import Location
from exporter.state.results import ResultTable
from exporter.state.status import Status, Transition
from exporter.state.tracker import Verdict


class StateView(Protocol):
    """Hysteresis, changes and the supportability verdicts (absent when no tracker runs)."""

    def verdicts(self, fresh: bool = False) -> dict[str, Verdict]:
        """The verdict of each source: as recomputed in the background every few seconds (cheap), or
        `fresh`, computed now (O(paths): call off the event loop)."""

    def verdict(self) -> Verdict:
        """The overall verdict, computed now (O(paths): call off the event loop)."""

    def changes(self, since: float, limit: int) -> list[Transition]:
        """Transitions, newest first."""

    def transition_counts(self) -> dict[tuple[Status, Status], int]:
        """Transitions since start by (from, to), every pair present."""

    @property
    def store_healthy(self) -> bool:
        """False while the baseline file cannot be written."""


class InventoryHealth(Protocol):
    """How the inventory source has been read."""

    @property
    def kind(self) -> str:
        """ "file", "ldap" or "demo"."""

    @property
    def interval(self) -> float: ...

    @property
    def last_success_timestamp(self) -> float | None: ...

    @property
    def errors_total(self) -> dict[str, int]: ...

    @property
    def reloads(self) -> dict[str, int]: ...

    @property
    def last_error(self) -> str | None: ...

    def stale(self, now: float | None = None) -> bool: ...


class AgentView(Protocol):
    """One agent as the outputs see it."""

    @property
    def source(self) -> str:
        """This agent's identity (--source)."""

    @property
    def inventory(self) -> Inventory: ...

    @property
    def interval(self) -> float:
        """Seconds between probes of one path."""

    @property
    def table(self) -> ResultTable:
        """The current plan's results."""

    @property
    def stats(self) -> EngineStats: ...

    @property
    def concurrency_limit(self) -> int: ...

    @property
    def ready(self) -> bool:
        """Every planned path has a result."""

    @property
    def state(self) -> StateView | None: ...

    @property
    def inventory_health(self) -> InventoryHealth | None: ...

    @property
    def locations(self) -> Mapping[tuple[str | int, ...], Location]:
        """Where each located blocked path (by its key) is blocked."""
