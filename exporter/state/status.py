"""What a path's hysteresis status is: pending, open or blocked (`Status`), why it is there
(`Classification`), everything remembered about one path (`PathStatus`), a change of status
(`Transition`), and the key a path is remembered under (`path_key`).

Plain immutable values: the baseline (baseline.py) stores them, the tracker (tracker.py) decides them.
The tracker keeps the planned paths' records as `StatusColumns` (a slot per path in a few arrays) and
makes a PathStatus when one is read or saved.
"""

from __future__ import annotations

import enum
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

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
    """Everything remembered about one path, as a value: what a reader or the store gets."""

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


class PlanKeys(Sequence[str]):
    """The path_key of each path of a plan, made when one is asked for (100k key strings would be
    ~10 MiB that only a saved record or a transition needs)."""

    def __init__(self, paths: Sequence[NetworkPath]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [path_key(p) for p in self.paths[index]]
        return path_key(self.paths[index])


STATUSES: tuple[Status, ...] = tuple(Status)
CLASSIFICATIONS: tuple[Classification, ...] = tuple(Classification)
_STATUS_CODE = {s: n for n, s in enumerate(STATUSES)}
_CLASS_CODE = {c: n for n, c in enumerate(CLASSIFICATIONS)}
STATE_CODE = {s: n + 1 for n, s in enumerate(State)}  # 0: no probe yet
_STATE_OF = (None, *State)
#: the codes of statuses and classifications in StatusColumns
PENDING, OPEN, BLOCKED = (_STATUS_CODE[s] for s in (Status.PENDING, Status.OPEN, Status.BLOCKED))
OK, RECOVERED, NEWLY, NEVER_OPEN, NOT_LISTENING = (
    _CLASS_CODE[c]
    for c in (
        Classification.OK,
        Classification.RECOVERED,
        Classification.NEWLY_BLOCKED,
        Classification.NEVER_OPEN,
        Classification.NOT_LISTENING,
    )
)
NONE = math.nan  # an absent time in a float column


def _time(value: float) -> float | None:
    return None if value != value else value  # NaN is None


#: what a recorded result changed, for listeners: the state, the status (status, classification or
#: since), the last-open time, the protocol facts (protocol_ok, sub-checks, certificate expiry); the
#: probe time and connect time change every time
CHANGED_STATE = 1
CHANGED_STATUS = 2
CHANGED_LAST_OPEN = 4
CHANGED_DETAILS = 8


class StatusColumns:
    """Every planned path's PathStatus, kept as columns indexed like the plan: one byte for its status,
    classification and last state, one float for each time, one int for each count. A probe overwrites
    a few slots in place instead of making a new record, and 100k paths cost a few megabytes.

    The tracker is the only writer (under its lock); `record(i)` makes the PathStatus a reader wants.
    """

    #: the per-path columns (everything but `keys`), in the order `copy` walks them
    COLUMNS = (
        "status",
        "classification",
        "last_state",
        "since",
        "first_probe",
        "first_open",
        "last_open",
        "last_probe",
        "saved_at",
        "non_open",
        "opens",
        "errors",
        "evidence",
    )
    __slots__ = ("keys", *COLUMNS)

    def __init__(self, keys: Sequence[str]) -> None:
        n = len(keys)
        self.keys = keys  # a plan's are PlanKeys: made when asked for, not kept
        self.status = bytearray(n)  # PENDING is code 0
        self.classification = bytearray(n)  # Classification.PENDING is code 0
        self.last_state = bytearray(n)
        nan = array("d", [NONE])
        self.since, self.first_probe, self.first_open = nan * n, nan * n, nan * n
        self.last_open, self.last_probe = nan * n, nan * n
        self.saved_at = array("d", [0.0]) * n  # wall time the record was last staged in the store
        zero = array("q", [0])
        self.non_open, self.opens, self.errors = zero * n, zero * n, zero * n
        self.evidence: list[str] = [""] * n

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, i: int) -> PathStatus:
        """Path `i`'s whole record, as an immutable value."""
        last = self.last_state[i]
        return PathStatus(
            key=self.keys[i],
            status=STATUSES[self.status[i]],
            classification=CLASSIFICATIONS[self.classification[i]],
            state_since=_time(self.since[i]),
            first_probe=_time(self.first_probe[i]),
            first_open=_time(self.first_open[i]),
            last_open=_time(self.last_open[i]),
            last_state=_STATE_OF[last],
            last_probe=_time(self.last_probe[i]),
            consecutive_non_open=self.non_open[i],
            consecutive_open=self.opens[i],
            consecutive_errors=self.errors[i],
            evidence=self.evidence[i],
        )

    def put(self, i: int, record: PathStatus) -> None:
        """Make path `i`'s slots hold `record` (a remembered one, at a plan change or start-up)."""
        self.status[i] = _STATUS_CODE[record.status]
        self.classification[i] = _CLASS_CODE[record.classification]
        self.last_state[i] = 0 if record.last_state is None else STATE_CODE[record.last_state]
        for column, value in (
            (self.since, record.state_since),
            (self.first_probe, record.first_probe),
            (self.first_open, record.first_open),
            (self.last_open, record.last_open),
            (self.last_probe, record.last_probe),
        ):
            column[i] = NONE if value is None else value
        self.saved_at[i] = record.last_probe or 0.0
        self.non_open[i] = record.consecutive_non_open
        self.opens[i] = record.consecutive_open
        self.errors[i] = record.consecutive_errors
        self.evidence[i] = record.evidence

    def copy(self, i: int, other: StatusColumns, j: int) -> None:
        """Path `i` takes over path `j` of `other` (the same path in the previous plan)."""
        for name in StatusColumns.COLUMNS:
            getattr(self, name)[i] = getattr(other, name)[j]
