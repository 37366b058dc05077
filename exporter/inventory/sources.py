"""Where the inventory comes from, behind one interface, and the one watcher that re-reads it.

A source is the static file, Active Directory, or the built-in demo (`exporter.demo`); each says how to
read it and whether a read could give something new. The watcher reads it on its schedule, keeps the last
good inventory (a failed read never removes a target, so nothing looks healthy that was not probed),
counts failures by a bounded reason and says when what it holds has gone stale.
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from exporter.errors import ConfigError, DiscoveryError
from exporter.inventory.ldap import LdapDiscoveryError, Reason, discover
from exporter.inventory.ldap_settings import LdapSettings
from exporter.inventory.model import Inventory
from exporter.inventory.static import load_inventory
from exporter.threads import name_this_thread

log = logging.getLogger(__name__)

STALE_AFTER_INTERVALS = 3
#: how soon to retry when there is no inventory at all yet
FIRST_RETRY = 30.0
#: every reason `errors_total` can carry; all start at 0 so the metric's label set never changes
REASONS: tuple[str, ...] = (*(r.value for r in Reason), "internal")


class InventorySource(Protocol):
    """One place an inventory can be read from."""

    @property
    def kind(self) -> str:
        """ "file", "ldap" or "demo": which health metrics describe it."""

    @property
    def interval(self) -> float:
        """Seconds between looks for a change; 0 reads once and never again."""

    def changed(self) -> bool:
        """Cheap: could a read now give something other than the last one?"""

    def read(self) -> Inventory:
        """The inventory; raises ConfigError or DiscoveryError (with the fix) when it cannot."""


class FileSource:
    """A static inventory file, re-read when its modification time or size changes (polled: works on
    every OS and filesystem)."""

    kind = "file"

    def __init__(self, path: str, interval: float = 10.0) -> None:
        self.path = path
        self.interval = interval
        self._seen: tuple[int, int] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = pathlib.Path(self.path).stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def changed(self) -> bool:
        stamp = self._stamp()
        return stamp is not None and stamp != self._seen

    def read(self) -> Inventory:
        self._seen = self._stamp()  # a file that fails to load is not retried until it changes again
        return load_inventory(self.path)


class DirectorySource:
    """Active Directory over LDAP: the Exchange servers, DCs and sites, read again every interval."""

    kind = "ldap"

    def __init__(self, settings: LdapSettings, interval: float = 900.0) -> None:
        self.settings = settings
        self.interval = interval

    def changed(self) -> bool:
        return True  # the directory cannot say cheaply: read it every interval

    def read(self) -> Inventory:
        result = discover(self.settings)
        for warning in result.warnings:
            log.warning("discovery: %s", warning)
        log.info("discovered from %s in %.2fs", result.url, result.duration_seconds)
        return result.inventory


def reason_of(exc: BaseException) -> str:
    """The bounded reason label for a failed read."""
    if isinstance(exc, LdapDiscoveryError):
        return exc.reason.value
    if isinstance(exc, ConfigError):
        return Reason.CONFIG.value
    if isinstance(exc, DiscoveryError):
        return Reason.SEARCH.value
    return "internal"


@dataclass(frozen=True)
class ReadFailure:
    at: float
    reason: str
    message: str


class InventoryWatcher:
    """Reads `source` now and whenever it may have changed; each new inventory goes to `on_inventory`.

    Counters are replaced, never mutated (copy-on-write), so a reader on another thread always sees a
    complete dict."""

    def __init__(
        self,
        source: InventorySource,
        on_inventory: Callable[[Inventory], None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.on_inventory = on_inventory
        self._clock = clock
        self.inventory: Inventory | None = None
        self.last_success_timestamp: float | None = None
        self.last_failure: ReadFailure | None = None
        self.errors_total: dict[str, int] = dict.fromkeys(REASONS, 0)
        #: reads after the first good one: "ok" (a new inventory was applied) or "error" (the last kept)
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def interval(self) -> float:
        return self.source.interval

    @property
    def last_error(self) -> str | None:
        """The message of the last read when it failed, None when the last read succeeded."""
        failure = self.last_failure
        if failure is None or (self.last_success_timestamp or 0.0) > failure.at:
            return None
        return failure.message

    def read_once(self, *, strict: bool = False) -> bool:
        """Read the source once; True when the inventory was replaced, False when the old one was kept.
        `strict` re-raises the error instead (a file that does not load at start-up stops the service)."""
        try:
            inventory = self.source.read()
        except Exception as exc:  # a bug in a source must not stop the watcher either
            if strict:
                raise
            self._failed(exc)
            return False
        if self.inventory is not None:
            self.reloads = {**self.reloads, "ok": self.reloads["ok"] + 1}
        self.inventory = inventory
        self.last_success_timestamp = self._clock()
        return True

    def _failed(self, exc: BaseException) -> None:
        reason = reason_of(exc)
        message = (
            str(exc) if isinstance(exc, ConfigError | DiscoveryError) else f"{type(exc).__name__}: {exc}"
        )
        self.last_failure = ReadFailure(self._clock(), reason, message)
        self.errors_total = {**self.errors_total, reason: self.errors_total.get(reason, 0) + 1}
        self.reloads = {**self.reloads, "error": self.reloads["error"] + 1}
        kept = "keeping the current inventory" if self.inventory is not None else "no inventory yet"
        if reason == "internal":
            log.exception("inventory read failed unexpectedly (%s)", kept)
        else:
            log.warning("inventory read failed (%s): %s; %s", reason, message, kept)

    def stale(self, now: float | None = None) -> bool:
        """True when no read has succeeded for more than 3 intervals (or ever)."""
        if self.last_success_timestamp is None:
            return True
        current = self._clock() if now is None else now
        return current - self.last_success_timestamp > STALE_AFTER_INTERVALS * self.source.interval

    def poll(self) -> bool:
        """One look: read when the source may have changed, and hand a new inventory on."""
        if not self.source.changed() or not self.read_once():
            return False
        if self.on_inventory is not None and self.inventory is not None:
            self.on_inventory(self.inventory)
        return True

    def _run(self) -> None:
        name_this_thread("ef-inventory")
        while True:
            wait = self.source.interval
            if self.inventory is None:
                wait = min(wait, FIRST_RETRY)
            if self._stop.wait(wait):
                return
            try:
                self.poll()
            except Exception:
                log.exception("applying a new inventory failed; keeping the current plan")

    def start(self) -> None:
        if self.source.interval > 0:
            self._thread = threading.Thread(target=self._run, name=f"inventory-{self.kind}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
