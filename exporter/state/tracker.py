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

`observe()` runs on the prober's thread and does no SQL: it overwrites the path's slots in the plan's
StatusColumns in place (no object per probe) and stages a PathStatus in the store only when the record
changed in a way that matters after a restart (or hourly). Readers on other threads (`view`, `statuses`,
`verdict`) take the lock for a moment, or copy the columns they need under it, and so see whole records.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.baseline import Baseline
from exporter.state.status import (
    BLOCKED,
    CHANGED_LAST_OPEN,
    CHANGED_STATUS,
    CLASSIFICATIONS,
    NEVER_OPEN,
    NEWLY,
    NOT_LISTENING,
    OK,
    OPEN,
    PENDING,
    RECOVERED,
    STATE_CODE,
    STATUSES,
    Classification,
    PathStatus,
    PlanKeys,
    Status,
    StatusColumns,
    Transition,
    path_key,
)

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
    """The hysteresis state of every path, kept in a Baseline, and the verdict over the current plan.

    The planned paths' records live in StatusColumns (one slot per path, overwritten in place by each
    probe); records of paths outside the plan (remembered from the store, or departed within the grace
    period) stay whole PathStatus values, keyed by path_key.
    """

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

        self._cols = StatusColumns([])  # the plan's records, index-aligned with `_paths`
        self._paths: list[NetworkPath] = []
        self._loose: dict[str, PathStatus] = self.store.load()  # records of paths outside the plan
        #: wall time each loose record was last staged in the store (a planned one's is a column)
        self._loose_saved = {key: status.last_probe or 0.0 for key, status in self._loose.items()}
        self._plan_set = False
        self._unplanned: dict[str, float] = {}  # key -> clock() when it left the plan
        self._counts: dict[tuple[Status, Status], int] = dict.fromkeys(TRANSITIONS, 0)
        #: moves whenever something a verdict reads may have changed (the plan, a planned path's
        #: status, classification, or its own errors reaching K): verdicts are recomputed only then
        self.generation = 0
        self._lock = threading.Lock()  # serialises writers, and readers that need a whole record

    # ---- the plan ----------------------------------------------------------------------------------

    def set_plan(self, paths: Sequence[NetworkPath]) -> None:
        """Make `paths` the judged set; `observe(index)` refers to this list from now on.

        Paths that left start their grace period; paths that came back within it keep their history.
        """
        keys = [path_key(p) for p in paths]  # for this change only: the columns make theirs on demand
        now = self._clock()
        with self._lock:
            self.generation += 1
            old = self._cols
            old_keys = list(old.keys)
            if keys == old_keys:
                self._paths = list(paths)
                for key in self._loose:  # (the first plan may be as empty as the start)
                    self._unplanned.setdefault(key, now)
                self._plan_set = True
                self._expire(now)
                return
            index = {key: i for i, key in enumerate(keys)}
            old_index = {key: j for j, key in enumerate(old_keys)}
            for key, j in old_index.items():
                if key not in index:
                    self._unplanned.setdefault(key, now)
                    if old.status[j] != PENDING or old.last_probe[j] == old.last_probe[j]:
                        self._loose[key] = old.record(j)  # it has a history worth the grace period
                        self._loose_saved[key] = old.saved_at[j]
            self._paths = list(paths)
            cols = StatusColumns(PlanKeys(self._paths))
            for i, key in enumerate(keys):
                kept = old_index.get(key)
                if kept is not None:
                    cols.copy(i, old, kept)
                else:
                    remembered = self._loose.pop(key, None)
                    if remembered is not None:
                        cols.put(i, remembered)
                        cols.saved_at[i] = self._loose_saved.pop(key, cols.saved_at[i])
                self._unplanned.pop(key, None)
            for key in self._loose:
                self._unplanned.setdefault(key, now)
            self._cols = cols
            self._plan_set = True
            self._expire(now)

    def _find(self, key: str) -> int | None:
        """The index of the planned path stored under `key` (a scan: only tests and the rare located
        device reset ask by key; the prober goes by index)."""
        for index, path in enumerate(self._paths):
            if path_key(path) == key:
                return index
        return None

    @property
    def paths(self) -> list[NetworkPath]:
        """The current plan, index-aligned with `observe(index)`."""
        return list(self._paths)

    @property
    def columns(self) -> StatusColumns:
        """The current plan's records (replaced, never resized, by set_plan)."""
        return self._cols

    def expire(self) -> list[str]:
        """Drop paths that have been out of the plan longer than the grace period; returns their keys.
        Call it periodically (set_plan does too)."""
        with self._lock:
            return self._expire(self._clock())

    def _expire(self, now: float) -> list[str]:
        gone = [key for key, left in self._unplanned.items() if max(0.0, now - left) >= self.grace]
        for key in gone:
            del self._unplanned[key]
            self._loose.pop(key, None)
            self._loose_saved.pop(key, None)
        if gone:
            self.store.forget(gone)
        return gone

    # ---- outcomes in -------------------------------------------------------------------------------

    def observe(self, path: str | int, outcome: Outcome, wall: float) -> Transition | None:
        """Fold one probe outcome into the path's record. `path` is a key (see `path_key`) or an index
        into the current plan. Returns the transition it caused, if any."""
        with self._lock:
            index = path if isinstance(path, int) else self._find(path)
            if index is not None:
                return self._step(self._cols, index, outcome, wall)[1]
            key = str(path)  # a path outside the plan: its record is a loose one
            prev = self._loose.get(key)
            if prev is None:
                prev = PathStatus(key)
                if self._plan_set:
                    self._unplanned.setdefault(key, self._clock())  # a late result for a departed path
            scratch = StatusColumns([key])
            scratch.put(0, prev)
            scratch.saved_at[0] = self._loose_saved.get(key, -REFRESH)
            transition = self._step(scratch, 0, outcome, wall)[1]
            self._loose[key] = scratch.record(0)
            self._loose_saved[key] = scratch.saved_at[0]
            return transition

    def observe_at(self, index: int, outcome: Outcome, wall: float) -> int:
        """observe() for path `index` of the plan, as the recorder calls it on every probe: returns which
        parts of the record changed (its CHANGED_STATUS and CHANGED_LAST_OPEN bits). Allocates nothing unless
        the status changes or the record is due to be saved."""
        with self._lock:
            return self._step(self._cols, index, outcome, wall)[0]

    def _step(self, c: StatusColumns, i: int, outcome: Outcome, wall: float) -> tuple[int, Transition | None]:
        """The rules of the module docstring, applied to slot `i` of `c` in place."""
        state = outcome.state
        status = prev_status = c.status[i]
        classification = prev_class = c.classification[i]
        since = prev_since = c.since[i]
        if since != since:  # never set (NaN)
            since = wall
        prev_non_open, prev_opens, prev_errors = c.non_open[i], c.opens[i], c.errors[i]
        moved = False
        changed = 0
        if state is State.OPEN:
            opens = prev_opens + 1
            c.non_open[i], c.opens[i], c.errors[i] = 0, opens, 0
            if c.first_open[i] != c.first_open[i]:
                c.first_open[i] = wall
            c.last_open[i] = wall
            changed = CHANGED_LAST_OPEN
            if status == PENDING:
                status, classification, since = OPEN, OK, wall
            elif status == BLOCKED and opens >= self.recover:
                moved = True
                status, classification, since = OPEN, RECOVERED, wall
            elif classification == RECOVERED and wall - since >= self.recovered_for:
                classification = OK
        elif state.is_block:
            non_open = prev_non_open + 1
            c.non_open[i], c.opens[i], c.errors[i] = non_open, 0, 0
            if status != BLOCKED and non_open >= self.k:
                moved = True
                # a clock that went back makes wall - last_open negative: that is "recently", not never
                last_open = c.last_open[i]
                seen = last_open == last_open
                if seen and wall - last_open <= self.retention:
                    classification = NEWLY
                elif state is State.REFUSED and not seen:
                    classification = NOT_LISTENING  # the host answered: nothing listens
                else:
                    classification = NEVER_OPEN
                status, since = BLOCKED, wall
            elif classification == NOT_LISTENING and state is not State.REFUSED:
                classification = NEVER_OPEN  # now something drops or rejects it on the way
        elif state in _OWN_ERRORS:
            c.errors[i] = prev_errors + 1

        prev_state = c.last_state[i]
        first_probe = c.last_probe[i] != c.last_probe[i]
        c.status[i], c.classification[i], c.since[i] = status, classification, since
        if first_probe:
            c.first_probe[i] = wall
        c.last_state[i] = new_state = STATE_CODE[state]
        c.last_probe[i] = wall
        c.evidence[i] = outcome.evidence
        if status != prev_status or classification != prev_class or since != prev_since:
            changed |= CHANGED_STATUS

        transition = None
        if moved:
            transition = Transition(
                wall,
                c.keys[i],
                STATUSES[prev_status],
                STATUSES[status],
                CLASSIFICATIONS[classification],
                outcome.evidence,
            )
            self._counts[(transition.from_status, transition.to_status)] += 1
            self.store.add_change(transition)
        k, recover = self.k, self.recover
        if changed & CHANGED_STATUS or (c.errors[i] >= k) != (prev_errors >= k):
            self.generation += 1  # what a verdict reads changed (K own errors in a row make it unknown)
        # counters matter after a restart only up to their threshold, so a path that stays blocked (or
        # open) is not rewritten on every probe; an unchanged one is re-saved every REFRESH
        if (
            first_probe
            or changed & CHANGED_STATUS
            or new_state != prev_state
            or min(c.non_open[i], k) != min(prev_non_open, k)
            or min(c.opens[i], recover) != min(prev_opens, recover)
            or min(c.errors[i], k) != min(prev_errors, k)
            or abs(wall - c.saved_at[i]) >= REFRESH
        ):
            c.saved_at[i] = wall
            self.store.put(c.record(i))
        return changed, transition

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        """The engine's sink signature (`Sink.record`): a tracker alone as the sink (tests)."""
        self.observe_at(index, outcome, wall)

    def answered_by_device(self, path: NetworkPath) -> int | None:
        """A located device (not the target host) answered for a path read as not listening (a reset by
        a firewall short of the target): it is blocked by the network after all, never open. Returns the
        path's index in the plan when its planned record changed."""
        with self._lock:  # a scan (a few ms at 100k paths), for the rare located device reset
            found = next((i for i, p in enumerate(self._paths) if p.key == path.key), None)
            if found is not None:
                c = self._cols
                if c.status[found] != BLOCKED or c.classification[found] != NOT_LISTENING:
                    return None
                c.classification[found] = NEVER_OPEN
                self.generation += 1
                self.store.put(c.record(found))
                return found
            key = path_key(path)
            record = self._loose.get(key)
            if record is not None and record.not_listening:
                record = replace(record, classification=Classification.NEVER_OPEN)
                self._loose[key] = record
                self.store.put(record)
            return None

    # ---- reading (any thread) ----------------------------------------------------------------------

    def view(self, path: str | int) -> PathStatus:
        """The path's record; a pending one for a path never probed."""
        with self._lock:
            index = path if isinstance(path, int) else self._find(path)
            if index is not None:
                return self._cols.record(index)
            key = str(path)
            return self._loose.get(key) or PathStatus(key)

    def statuses(self) -> list[tuple[NetworkPath, PathStatus]]:
        """Every planned path with its record, in plan order (for metrics and the matrix page). Made a
        block at a time, so the prober never waits long for the lock."""
        with self._lock:
            cols, paths = self._cols, self._paths
        out: list[tuple[NetworkPath, PathStatus]] = []
        for start in range(0, len(paths), 4096):
            with self._lock:
                out += [(paths[i], cols.record(i)) for i in range(start, min(start + 4096, len(paths)))]
        return out

    def verdict(self, source: str | None = None) -> Verdict:
        """The supportability verdict over the planned paths of `source`, or of every source."""
        paths, snapshot = self._snapshot()
        return self._judge(
            [(i, p) for i, p in enumerate(paths) if source is None or p.source == source], snapshot
        )

    def verdicts(self) -> dict[str, Verdict]:
        """The verdict of each source in the plan."""
        paths, snapshot = self._snapshot()
        by_source: dict[str, list[tuple[int, NetworkPath]]] = {}
        for i, p in enumerate(paths):
            by_source.setdefault(p.source, []).append((i, p))
        return {source: self._judge(items, snapshot) for source, items in sorted(by_source.items())}

    def _snapshot(self) -> tuple[list[NetworkPath], tuple[bytes, bytes, array[int]]]:
        """The plan and the columns a verdict reads, copied at one moment (a few memcpy)."""
        with self._lock:
            c = self._cols
            return self._paths, (bytes(c.status), bytes(c.classification), c.errors[:])

    def _judge(
        self, items: Iterable[tuple[int, NetworkPath]], snapshot: tuple[bytes, bytes, array[int]]
    ) -> Verdict:
        status, classification, errors = snapshot
        opened = silent = 0
        offending: list[NetworkPath] = []
        undetermined: list[NetworkPath] = []
        observed = False  # required paths seen only from observers: the rule does not apply to them
        for i, p in items:
            if not p.required:
                continue  # Edge and client paths may legitimately be filtered
            if not p.judged:
                observed = True
                continue
            code = status[i]
            if code == PENDING:
                undetermined.append(p)
            elif code == BLOCKED and classification[i] != NOT_LISTENING:
                offending.append(p)
            elif code == BLOCKED:
                silent += 1
            elif errors[i] >= self.k:
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
