"""Periodic re-discovery without losing targets: keeps the last good inventory, counts failures by a
bounded reason, and says when what it holds has gone stale. No threads or event loop in here: the
service calls `refresh_once()` on its own schedule (in a worker thread; discovery blocks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.errors import ConfigError, DiscoveryError
from exporter.inventory.ldap import DiscoveryResult, LdapDiscoveryError, Reason
from exporter.inventory.model import Inventory

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 15 * 60
STALE_AFTER_INTERVALS = 3
#: every reason `errors_total` can carry; all start at 0 so the metric's label set never changes
REASONS: tuple[str, ...] = (*(r.value for r in Reason), "internal")


def reason_of(exc: BaseException) -> str:
    """The bounded reason label for a failed discovery."""
    if isinstance(exc, LdapDiscoveryError):
        return exc.reason.value
    if isinstance(exc, ConfigError):
        return Reason.CONFIG.value
    if isinstance(exc, DiscoveryError):
        return Reason.SEARCH.value
    return "internal"


@dataclass(frozen=True)
class RefreshFailure:
    at: float
    reason: str
    message: str


class InventoryRefresher:
    """The last good discovery and the health of the refreshes that produced it.

    A failed refresh never replaces (or empties) the inventory it already holds.
    """

    def __init__(
        self,
        discover: Callable[[], DiscoveryResult],
        *,
        interval: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
        initial: DiscoveryResult | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigError(
                "the discovery refresh interval must be greater than 0", fix="e.g. 900 (15 min)"
            )
        self._discover = discover
        self.interval = float(interval)
        self._clock = clock
        self.result: DiscoveryResult | None = initial
        self.last_success_timestamp: float | None = clock() if initial is not None else None
        self.last_failure: RefreshFailure | None = None
        self.errors_total: dict[str, int] = dict.fromkeys(REASONS, 0)

    @property
    def inventory(self) -> Inventory | None:
        return self.result.inventory if self.result is not None else None

    def refresh_once(self) -> bool:
        """Discover once; True when the inventory was replaced, False when the old one was kept."""
        try:
            result = self._discover()
        except Exception as exc:  # a bug in discovery must not stop the refresh loop either
            reason = reason_of(exc)
            message = (
                str(exc) if isinstance(exc, ConfigError | DiscoveryError) else f"{type(exc).__name__}: {exc}"
            )
            self.last_failure = RefreshFailure(self._clock(), reason, message)
            # copy-on-write: a reader in another thread always sees a complete dict
            self.errors_total = {**self.errors_total, reason: self.errors_total.get(reason, 0) + 1}
            kept = (
                f"keeping the inventory from {self.result.url}"
                if self.result is not None
                else "no inventory yet"
            )
            if reason == "internal":
                log.exception("inventory refresh failed unexpectedly (%s)", kept)
            else:
                log.warning("inventory refresh failed (%s): %s; %s", reason, message, kept)
            return False
        self.result = result
        self.last_success_timestamp = self._clock()
        return True

    def stale(self, now: float | None = None) -> bool:
        """True when no discovery has succeeded for more than 3 refresh intervals (or ever)."""
        if self.last_success_timestamp is None:
            return True
        current = self._clock() if now is None else now
        return current - self.last_success_timestamp > STALE_AFTER_INTERVALS * self.interval
