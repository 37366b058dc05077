"""What a path's hysteresis status is: pending, open or blocked (`Status`), why it is there
(`Classification`), everything remembered about one path (`PathStatus`), a change of status
(`Transition`), and the key a path is remembered under (`path_key`).

Plain immutable values: the baseline (baseline.py) stores them, the tracker (tracker.py) decides them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import State


class Status(enum.StrEnum):
    """The hysteresis state of a path: the small, bounded set transitions are counted over."""

    PENDING = "pending"  # no verdict yet: never probed, or neither open nor K times blocked so far
    OPEN = "open"
    BLOCKED = "blocked"


class Classification(enum.StrEnum):
    """Why a path is where it is. Only NEWLY_BLOCKED means "this used to work": the one that pages."""

    PENDING = "pending"  # status pending
    OK = "ok"  # open, and not recently recovered
    RECOVERED = "recovered"  # open again after being blocked
    NEWLY_BLOCKED = "newly_blocked"  # blocked, and was seen open within the retention window
    NEVER_OPEN = "never_open"  # blocked, and not seen open within the retention window
    #: K non-open probes, never seen open, and the host itself refused (a TCP RST, an ICMP port
    #: unreachable): nothing listens there. The network delivered the packet: not a firewall, never a
    #: violation, never a page. Turns NEVER_OPEN when the path is later dropped or rejected by ICMP.
    NOT_LISTENING = "not_listening"


@dataclass(frozen=True, slots=True)
class PathStatus:
    """Everything remembered about one path. Immutable: a new one replaces the old on every probe,
    so a reader on another thread always sees one whole record."""

    key: str
    status: Status = Status.PENDING
    classification: Classification = Classification.PENDING
    state_since: float | None = None  # unix time `status` began
    first_probe: float | None = None
    first_open: float | None = None  # first time seen open
    last_open: float | None = None  # last time seen open
    last_state: State | None = None  # what the last probe said, errors included
    last_probe: float | None = None
    consecutive_non_open: int = 0  # refused/filtered/unreachable in a row
    consecutive_open: int = 0
    consecutive_errors: int = 0  # local_error/dns_error in a row: how long we have been unable to tell
    evidence: str = ""  # of the last probe

    @property
    def blocked(self) -> bool:
        """Blocked by the network: K non-open probes in a row, and not merely a port nobody listens on."""
        return self.status is Status.BLOCKED and self.classification is not Classification.NOT_LISTENING

    @property
    def not_listening(self) -> bool:
        return self.status is Status.BLOCKED and self.classification is Classification.NOT_LISTENING

    def duration(self, now: float) -> float:
        """Seconds in the current status; never negative, even after the clock jumped backwards."""
        if self.state_since is None:
            return 0.0
        return max(0.0, now - self.state_since)


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a path's hysteresis status, as counted and kept in the changes log."""

    time: float  # unix time of the probe that caused it
    key: str
    from_status: Status
    to_status: Status
    classification: Classification  # of the path after the change
    evidence: str


def path_key(path: NetworkPath) -> str:
    """The stable string a path is stored under: `source|target|port|proto|check`."""
    return "|".join(str(part) for part in path.key)
