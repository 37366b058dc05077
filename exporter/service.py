"""Wiring for a discovered organisation: refresh the inventory from AD and re-plan the prober.

A failed refresh keeps the last good inventory (so no target disappears and nothing looks healthy that
was not probed); the refresher's counters feed the discovery metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from exporter.inventory.model import Inventory
from exporter.inventory.refresh import InventoryRefresher
from exporter.plan.planner import Path
from exporter.prober import Prober

log = logging.getLogger(__name__)

#: how soon to retry when there is no inventory at all yet
FIRST_RETRY = 30.0


class DiscoveryLoop:
    """Runs `refresher` every interval on its own thread and hands each new inventory to the prober."""

    def __init__(
        self,
        refresher: InventoryRefresher,
        prober: Prober,
        planner: Callable[[Inventory], Sequence[Path]],
    ) -> None:
        self.refresher = refresher
        self.prober = prober
        self.planner = planner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self) -> None:
        """Re-plan from the refresher's current inventory (after a successful refresh)."""
        inventory = self.refresher.inventory
        if inventory is None:
            return
        paths = self.planner(inventory)
        self.prober.replace_plan(inventory, paths)
        log.info(
            "inventory refreshed: %d servers, %d DCs, %d paths",
            len(inventory.servers),
            len(inventory.domain_controllers),
            len(paths),
        )

    def _run(self) -> None:
        while True:
            wait = self.refresher.interval if self.refresher.inventory is not None else FIRST_RETRY
            if self._stop.wait(min(wait, self.refresher.interval)):
                return
            try:
                if self.refresher.refresh_once():
                    self.apply()
            except Exception:
                log.exception("applying a refreshed inventory failed; keeping the current plan")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
