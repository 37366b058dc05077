"""The state machine: probe outcomes in; hysteresis, classification, transitions and the
supportability verdict out. Testable with nothing but outcomes (and a Baseline, which may be memory only).

Rules, in one place:
- A path becomes BLOCKED after `k` consecutive refused/filtered/unreachable probes, and OPEN again after
  `recover` consecutive open probes. local_error and dns_error are our own trouble: they neither advance
  nor reset those counts.
- A blocked path is NEWLY_BLOCKED when it was seen open within `retention` of the probe that blocked it,
  else NEVER_OPEN; decided at that moment and kept while it stays blocked (across restarts too, so a
  block is reported as new once). An open path is OK, or RECOVERED for `recovered_for` after a block.
- Transitions are changes of status: pending->blocked, open->blocked, blocked->open. A first open probe
  (pending->open) is the baseline being learned, not a change, and is neither counted nor logged.
- Paths that leave the plan are never turned into blocks: they stop being judged, are kept for `grace`
  (a target that flickers out of the inventory keeps its history), then dropped from the store.
- The verdict follows Microsoft's rule: compliant only when every required (Exchange-Exchange,
  Exchange-DC) path is open. Any blocked required path: not compliant. Otherwise unknown (None) while a
  required path is pending or its last `k` probes were all our own errors, or when nothing is required.

`observe()` runs on the prober's thread and does no SQL: it replaces one immutable record and stages it
in the store. Readers on other threads (`view`, `statuses`, `verdict`) take no lock and always see whole
records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.baseline import Baseline
from exporter.state.status import Classification, PathStatus, Status, Transition, path_key

__all__ = [
    "TRANSITIONS",
    "Classification",
    "PathStatus",
    "Status",
    "Tracker",
    "Transition",
    "Verdict",
    "path_key",
]

DEFAULT_K = 3
DEFAULT_RECOVER = 1
DEFAULT_RETENTION = 30 * 86400.0
DEFAULT_GRACE = 3600.0
DEFAULT_RECOVERED_FOR = 86400.0
#: a path whose record did not otherwise change is re-saved this often (keeps last_open fresh on disk
#: without writing every path on every probe)
REFRESH = 3600.0

#: every (from, to) a transition can have: the bounded label set of changes_total
TRANSITIONS: tuple[tuple[Status, Status], ...] = (
    (Status.PENDING, Status.BLOCKED),
    (Status.OPEN, Status.BLOCKED),
    (Status.BLOCKED, Status.OPEN),
)

_OWN_ERRORS = frozenset({State.LOCAL_ERROR, State.DNS_ERROR})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Is this (source's part of the) organisation supportable? compliant is None when we cannot tell."""

    compliant: bool | None
    required: int  # required paths planned (and judged: probed from an Exchange server or a DC)
    open: int
    blocked: int
    unknown: int  # pending, or only our own errors lately
    offending: tuple[NetworkPath, ...]  # the required paths that are blocked
    undetermined: tuple[NetworkPath, ...]  # the required paths counted as unknown
    not_listening: int = 0  # required paths whose host refused and that never worked: no violation
    #: False when the source is no Exchange server or DC (an observer, a client zone): Microsoft's rule
    #: is about traffic between those; a monitoring host may sit behind a firewall of its own
    applicable: bool = True
    reason: str = ""  # why compliant is None, or why the rule does not apply


class Tracker:
    """The hysteresis state of every path, kept in a Baseline, and the verdict over the current plan."""

    def __init__(
        self,
        store: Baseline | None = None,
        *,
        k: int = DEFAULT_K,
        recover: int = DEFAULT_RECOVER,
        retention: float = DEFAULT_RETENTION,
        grace: float = DEFAULT_GRACE,
        recovered_for: float = DEFAULT_RECOVERED_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store if store is not None else Baseline(None)
        self.k = k
        self.recover = recover
        self.retention = retention
        self.grace = grace
        self.recovered_for = recovered_for
        self._clock = clock  # monotonic: only for in-process durations (the grace period)

        self._records: dict[str, PathStatus] = self.store.load()
        # wall time each record was last staged, to re-save unchanged records only every REFRESH
        self._saved_at: dict[str, float] = {
            key: status.last_probe or 0.0 for key, status in self._records.items()
        }
        self._plan: dict[str, NetworkPath] = {}  # for membership
        self._plan_items: list[
            tuple[str, NetworkPath]
        ] = []  # in plan order, index-aligned with observe(index)
        self._plan_keys: list[str] = []
        self._plan_set = False
        self._unplanned: dict[str, float] = {}  # key -> clock() when it left the plan
        self._counts: dict[tuple[Status, Status], int] = dict.fromkeys(TRANSITIONS, 0)
        self._lock = threading.Lock()  # serialises writers; readers need none

    # ---- the plan ----------------------------------------------------------------------------------

    def set_plan(self, paths: Sequence[NetworkPath]) -> None:
        """Make `paths` the judged set; `observe(index)` refers to this list from now on.

        Paths that left start their grace period; paths that came back within it keep their history.
        """
        keys = [path_key(p) for p in paths]
        plan = dict(zip(keys, paths, strict=True))
        now = self._clock()
        with self._lock:
            for key in self._records:
                if key not in plan:
                    self._unplanned.setdefault(key, now)
            for key in self._plan:
                if key not in plan:
                    self._unplanned.setdefault(key, now)
            for key in plan:
                self._unplanned.pop(key, None)
            self._plan_keys = keys
            self._plan_items = list(zip(keys, paths, strict=True))
            self._plan = plan
            self._plan_set = True
            self._expire(now)

    @property
    def paths(self) -> list[NetworkPath]:
        """The current plan, index-aligned with `observe(index)`."""
        return [p for _key, p in self._plan_items]

    def expire(self) -> list[str]:
        """Drop paths that have been out of the plan longer than the grace period; returns their keys.
        Call it periodically (set_plan does too)."""
        with self._lock:
            return self._expire(self._clock())

    def _expire(self, now: float) -> list[str]:
        gone = [key for key, left in self._unplanned.items() if max(0.0, now - left) >= self.grace]
        for key in gone:
            del self._unplanned[key]
            self._records.pop(key, None)
            self._saved_at.pop(key, None)
        if gone:
            self.store.forget(gone)
        return gone

    # ---- outcomes in -------------------------------------------------------------------------------

    def observe(self, path: str | int, outcome: Outcome, wall: float) -> Transition | None:
        """Fold one probe outcome into the path's record. `path` is a key (see `path_key`) or an index
        into the current plan. Returns the transition it caused, if any."""
        key = self._plan_keys[path] if isinstance(path, int) else path
        with self._lock:
            prev = self._records.get(key)
            if prev is None:
                prev = PathStatus(key)
                if self._plan_set and key not in self._plan:
                    self._unplanned.setdefault(key, self._clock())  # a late result for a departed path
            status, transition = self._advance(prev, outcome, wall)
            self._records[key] = status
            if transition is not None:
                self._counts[(transition.from_status, transition.to_status)] += 1
                self.store.add_change(transition)
            if self._worth_saving(prev, status) or abs(wall - self._saved_at.get(key, -REFRESH)) >= REFRESH:
                self._saved_at[key] = wall
                self.store.put(status)
        return transition

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        """The engine's sink signature (`Sink.record`), so the tracker can sit beside the PathTable."""
        self.observe(index, outcome, wall)

    def answered_by_device(self, key: str) -> None:
        """A located device (not the target host) answered for a path read as not listening (a reset by
        a firewall short of the target): it is blocked by the network after all, never open."""
        with self._lock:
            record = self._records.get(key)
            if record is None or not record.not_listening:
                return
            record = replace(record, classification=Classification.NEVER_OPEN)
            self._records[key] = record
            self.store.put(record)

    def _advance(
        self, prev: PathStatus, outcome: Outcome, wall: float
    ) -> tuple[PathStatus, Transition | None]:
        state = outcome.state
        status = prev.status
        classification = prev.classification
        since = prev.state_since if prev.state_since is not None else wall
        first_open, last_open = prev.first_open, prev.last_open
        non_open, opens, errors = prev.consecutive_non_open, prev.consecutive_open, prev.consecutive_errors
        moved_from: Status | None = None

        if state is State.OPEN:
            non_open, opens, errors = 0, opens + 1, 0
            first_open = first_open if first_open is not None else wall
            last_open = wall
            if status is Status.PENDING:
                status, classification, since = Status.OPEN, Classification.OK, wall
            elif status is Status.BLOCKED and opens >= self.recover:
                moved_from = status
                status, classification, since = Status.OPEN, Classification.RECOVERED, wall
            elif classification is Classification.RECOVERED and wall - since >= self.recovered_for:
                classification = Classification.OK
        elif state.is_block:
            non_open, opens, errors = non_open + 1, 0, 0
            if status is not Status.BLOCKED and non_open >= self.k:
                moved_from = status
                # a clock that went back makes wall - last_open negative: that is "recently", not never
                recent = last_open is not None and wall - last_open <= self.retention
                if recent:
                    classification = Classification.NEWLY_BLOCKED
                elif state is State.REFUSED and last_open is None:
                    classification = Classification.NOT_LISTENING  # the host answered: nothing listens
                else:
                    classification = Classification.NEVER_OPEN
                status, since = Status.BLOCKED, wall
            elif classification is Classification.NOT_LISTENING and state is not State.REFUSED:
                classification = Classification.NEVER_OPEN  # now something drops or rejects it on the way
        elif state in _OWN_ERRORS:
            errors += 1

        record = PathStatus(
            key=prev.key,
            status=status,
            classification=classification,
            state_since=since,
            first_probe=prev.first_probe if prev.first_probe is not None else wall,
            first_open=first_open,
            last_open=last_open,
            last_state=state,
            last_probe=wall,
            consecutive_non_open=non_open,
            consecutive_open=opens,
            consecutive_errors=errors,
            evidence=outcome.evidence,
        )
        if moved_from is None:
            return record, None
        return record, Transition(wall, prev.key, moved_from, status, classification, outcome.evidence)

    def _worth_saving(self, prev: PathStatus, new: PathStatus) -> bool:
        """Whether the change matters after a restart. Counters matter only up to their threshold, so
        a path that stays blocked (or open) is not rewritten on every probe."""
        return (
            prev.last_probe is None
            or new.status is not prev.status
            or new.classification is not prev.classification
            or new.last_state is not prev.last_state
            or min(new.consecutive_non_open, self.k) != min(prev.consecutive_non_open, self.k)
            or min(new.consecutive_open, self.recover) != min(prev.consecutive_open, self.recover)
            or min(new.consecutive_errors, self.k) != min(prev.consecutive_errors, self.k)
        )

    # ---- reading (any thread) ----------------------------------------------------------------------

    def view(self, path: str | int) -> PathStatus:
        """The path's record; a pending one for a path never probed."""
        key = self._plan_keys[path] if isinstance(path, int) else path
        return self._records.get(key) or PathStatus(key)

    def statuses(self) -> list[tuple[NetworkPath, PathStatus]]:
        """Every planned path with its record, in plan order (for metrics and the matrix page)."""
        records = self._records
        return [(p, records.get(key) or PathStatus(key)) for key, p in self._plan_items]

    def verdict(self, source: str | None = None) -> Verdict:
        """The supportability verdict over the planned paths of `source`, or of every source."""
        return self._judge([(k, p) for k, p in self._plan.items() if source is None or p.source == source])

    def verdicts(self) -> dict[str, Verdict]:
        """The verdict of each source in the plan."""
        by_source: dict[str, list[tuple[str, NetworkPath]]] = {}
        for key, p in self._plan.items():
            by_source.setdefault(p.source, []).append((key, p))
        return {source: self._judge(items) for source, items in sorted(by_source.items())}

    def _judge(self, items: Iterable[tuple[str, NetworkPath]]) -> Verdict:
        records = self._records
        opened = silent = 0
        offending: list[NetworkPath] = []
        undetermined: list[NetworkPath] = []
        observed = False  # required paths seen only from observers: the rule does not apply to them
        for key, p in items:
            if not p.required:
                continue  # Edge and client paths may legitimately be filtered
            if not p.judged:
                observed = True
                continue
            record = records.get(key)
            if record is None or record.status is Status.PENDING:
                undetermined.append(p)
            elif record.blocked:
                offending.append(p)
            elif record.not_listening:
                silent += 1
            elif record.consecutive_errors >= self.k:
                undetermined.append(p)  # open once, but we have not been able to look for a while
            else:
                opened += 1
        required = opened + silent + len(offending) + len(undetermined)
        compliant: bool | None
        reason = ""
        if offending:
            compliant = False
        elif required == 0:
            compliant = None
            reason = (
                "not applicable: an observer's paths are reported, but only Exchange servers' and domain "
                "controllers' own paths are subject to Microsoft's rule"
                if observed
                else "no required path is planned"
            )
        elif undetermined:
            compliant, reason = None, "undetermined: required paths pending or only our own errors lately"
        else:
            compliant = True
        return Verdict(
            compliant,
            required,
            opened,
            len(offending),
            len(undetermined),
            tuple(offending),
            tuple(undetermined),
            silent,
            applicable=required > 0 or not observed,
            reason=reason,
        )

    def changes(self, since: float = 0.0, limit: int = 100) -> list[Transition]:
        """The transitions log, newest first (see Baseline.changes)."""
        return self.store.changes(since, limit)

    def transition_counts(self) -> dict[tuple[Status, Status], int]:
        """Transitions since start, by (from, to), every pair present (for changes_total)."""
        return dict(self._counts)
