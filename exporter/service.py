"""Wiring for a discovered organisation: refresh the inventory from AD and re-plan the prober.

A failed refresh keeps the last good inventory (so no target disappears and nothing looks healthy that
was not probed); the refresher's counters feed the discovery metrics.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable, Sequence

from exporter.errors import ConfigError
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


class FileReloader:
    """Re-reads the static inventory file when it changes (polled: works on every OS and filesystem).

    A file that no longer validates is reported and the running plan is kept, so an editing mistake
    never empties the target list."""

    def __init__(
        self,
        path: str,
        prober: Prober,
        planner: Callable[[Inventory], Sequence[Path]],
        load: Callable[[str], Inventory],
        interval: float = 10.0,
    ) -> None:
        self.path = path
        self.prober = prober
        self.planner = planner
        self.load = load
        self.interval = interval
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        self.last_error: str | None = None
        self._seen = self._stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = pathlib.Path(self.path).stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def check_once(self) -> bool:
        """Reload if the file changed; True when a new plan was applied."""
        stamp = self._stamp()
        if stamp == self._seen or stamp is None:
            return False
        self._seen = stamp
        try:
            inventory = self.load(self.path)
        except ConfigError as exc:
            self.reloads = {**self.reloads, "error": self.reloads["error"] + 1}
            self.last_error = str(exc)
            log.error("inventory reload failed, keeping the current plan: %s", exc)
            return False
        paths = self.planner(inventory)
        self.prober.replace_plan(inventory, paths)
        self.reloads = {**self.reloads, "ok": self.reloads["ok"] + 1}
        self.last_error = None
        log.info(
            "inventory reloaded: %d servers, %d DCs, %d paths",
            len(inventory.servers),
            len(inventory.domain_controllers),
            len(paths),
        )
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception:
                log.exception("inventory reload crashed; keeping the current plan")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inventory-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
