"""The baseline and the tracker: hysteresis, classification, restarts, the verdict, and a state file
that is corrupt, unopenable or full. Real SQLite files in tmp_path, nothing mocked."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable

import pytest

from exporter.plan.catalogue import PathKind
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.baseline import SCHEMA_VERSION, Baseline, default_state_file
from exporter.state.status import Classification, PathStatus, Status, Transition, path_key
from exporter.state.tracker import TRANSITIONS, Tracker, Verdict
from tests.lab.waiting import wait_until

DAY = 86400.0
T0 = float(int(time.time()))  # near the real now: the changes log prunes by real age
STEP = 30.0

OPEN = Outcome(State.OPEN, 0.001, "")
FILTERED = Outcome(State.FILTERED, 2.0, "no answer to 3 SYN attempts of 2s", 3)
REFUSED = Outcome(State.REFUSED, 0.001, "ECONNREFUSED")
UNREACHABLE = Outcome(State.UNREACHABLE, 0.002, "EHOSTUNREACH")
LOCAL = Outcome(State.LOCAL_ERROR, None, "EMFILE")
DNS = Outcome(State.DNS_ERROR, None, "NXDOMAIN")

BASELINE_LOG = "exporter.state.baseline"


def make_path(
    target: str = "ex2.corp.example",
    port: int = 135,
    kind: PathKind = PathKind.EXCHANGE_EXCHANGE,
    source: str = "ex1.corp.example",
    check: str = "tcp",
) -> NetworkPath:
    return NetworkPath(
        source=source,
        source_site="HQ",
        target=target,
        target_site="HQ",
        target_role="mailbox",
        port=port,
        proto="tcp",
        service="rpc-epm",
        kind=kind,
        check=check,
    )


class Clock:
    """A monotonic clock the test moves by hand (for the grace period)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed(
    tracker: Tracker, path: str | int, outcomes: Iterable[Outcome], start: float = T0
) -> list[Transition | None]:
    return [tracker.observe(path, o, start + i * STEP) for i, o in enumerate(outcomes)]


def transitions(results: list[Transition | None]) -> list[tuple[Status, Status]]:
    return [(t.from_status, t.to_status) for t in results if t is not None]


def health(store: Baseline) -> tuple[bool, str | None]:
    return store.healthy, store.last_error


def warnings_from_baseline(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == BASELINE_LOG and text in r.getMessage()]


# ---- hysteresis and classification ------------------------------------------------------------------


def test_path_key_is_source_target_port_proto_check() -> None:
    assert path_key(make_path(target="EX2.Corp.Example")) == "ex1.corp.example|ex2.corp.example|135|tcp|tcp"


def test_first_open_probe_learns_the_baseline_without_a_transition() -> None:
    tracker = Tracker()
    key = path_key(make_path())
    assert tracker.view(key).classification is Classification.PENDING
    assert feed(tracker, key, [OPEN]) == [None]
    status = tracker.view(key)
    assert (status.status, status.classification) == (Status.OPEN, Classification.OK)
    assert (status.first_probe, status.first_open, status.last_open, status.state_since) == (T0, T0, T0, T0)
    assert tracker.transition_counts() == dict.fromkeys(TRANSITIONS, 0)


def test_flapping_path_never_reaches_blocked_with_k3() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    results = feed(tracker, key, [OPEN, FILTERED] * 20 + [OPEN, FILTERED, FILTERED])
    assert transitions(results) == []
    status = tracker.view(key)
    assert not status.blocked
    assert status.classification is Classification.OK
    assert status.consecutive_non_open == 2


def test_path_seen_open_then_blocked_k_times_is_newly_blocked() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    results = feed(tracker, key, [OPEN, REFUSED, FILTERED, UNREACHABLE])
    assert results[:3] == [None, None, None]
    assert results[3] == Transition(
        T0 + 3 * STEP, key, Status.OPEN, Status.BLOCKED, Classification.NEWLY_BLOCKED, "EHOSTUNREACH"
    )
    status = tracker.view(key)
    assert status.blocked
    assert status.classification is Classification.NEWLY_BLOCKED
    assert status.state_since == T0 + 3 * STEP
    assert status.last_open == T0


def test_path_never_seen_open_blocks_as_never_open() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    results = feed(tracker, key, [FILTERED, FILTERED])
    assert results == [None, None]
    assert tracker.view(key).classification is Classification.PENDING  # two are not enough to judge
    [transition] = feed(tracker, key, [FILTERED], start=T0 + 2 * STEP)
    assert transition is not None
    assert (transition.from_status, transition.to_status) == (Status.PENDING, Status.BLOCKED)
    assert tracker.view(key).classification is Classification.NEVER_OPEN
    assert tracker.view(key).first_open is None


def test_blocked_path_that_opens_again_is_recovered_then_ok_after_a_day() -> None:
    tracker = Tracker(k=3, recover=1, recovered_for=DAY)
    key = path_key(make_path())
    results = feed(tracker, key, [OPEN, FILTERED, FILTERED, FILTERED, FILTERED, OPEN])
    assert transitions(results) == [(Status.OPEN, Status.BLOCKED), (Status.BLOCKED, Status.OPEN)]
    assert tracker.view(key).classification is Classification.RECOVERED
    feed(tracker, key, [OPEN], start=T0 + 5 * STEP + DAY - 1)
    assert tracker.view(key).classification is Classification.RECOVERED
    feed(tracker, key, [OPEN], start=T0 + 5 * STEP + DAY)
    assert tracker.view(key).classification is Classification.OK
    # blocked again: it worked a moment ago, so it is news again
    results = feed(tracker, key, [REFUSED] * 3, start=T0 + 2 * DAY)
    assert transitions(results) == [(Status.OPEN, Status.BLOCKED)]
    assert tracker.view(key).classification is Classification.NEWLY_BLOCKED


def test_recover_count_needs_that_many_consecutive_open_probes() -> None:
    tracker = Tracker(k=2, recover=2)
    key = path_key(make_path())
    feed(tracker, key, [OPEN, FILTERED, FILTERED])
    assert tracker.view(key).blocked
    results = feed(tracker, key, [OPEN, FILTERED, OPEN], start=T0 + DAY)
    assert transitions(results) == []
    assert tracker.view(key).blocked
    [transition] = feed(tracker, key, [OPEN], start=T0 + 2 * DAY)
    assert transition is not None and transition.to_status is Status.OPEN
    assert tracker.view(key).classification is Classification.RECOVERED


def test_local_and_dns_errors_neither_advance_nor_reset_the_count() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    feed(tracker, key, [OPEN, FILTERED, FILTERED])
    results = feed(tracker, key, [LOCAL, DNS, LOCAL] * 5, start=T0 + DAY)
    assert transitions(results) == []
    status = tracker.view(key)
    assert (status.status, status.consecutive_non_open, status.consecutive_errors) == (Status.OPEN, 2, 15)
    assert status.last_state is State.LOCAL_ERROR
    [transition] = feed(tracker, key, [FILTERED], start=T0 + 2 * DAY)
    assert transition is not None
    assert (transition.from_status, transition.to_status) == (Status.OPEN, Status.BLOCKED)
    assert tracker.view(key).consecutive_errors == 0


def test_only_our_own_errors_leave_a_path_pending() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    feed(tracker, key, [LOCAL, DNS] * 10)
    status = tracker.view(key)
    assert (status.status, status.classification, status.consecutive_non_open) == (
        Status.PENDING,
        Classification.PENDING,
        0,
    )
    assert status.first_probe == T0


def test_transitions_are_counted_by_from_and_to_and_logged_with_evidence() -> None:
    tracker = Tracker(k=1)
    a, b = path_key(make_path(port=135)), path_key(make_path(port=445))
    feed(tracker, a, [OPEN, REFUSED, OPEN, REFUSED])
    feed(tracker, b, [FILTERED], start=T0 + DAY)
    assert tracker.transition_counts() == {
        (Status.PENDING, Status.BLOCKED): 1,
        (Status.OPEN, Status.BLOCKED): 2,
        (Status.BLOCKED, Status.OPEN): 1,
    }
    log = tracker.changes(since=0.0, limit=10)
    assert [(t.key, t.from_status, t.to_status, t.evidence) for t in log] == [
        (b, Status.PENDING, Status.BLOCKED, FILTERED.evidence),
        (a, Status.OPEN, Status.BLOCKED, "ECONNREFUSED"),
        (a, Status.BLOCKED, Status.OPEN, ""),
        (a, Status.OPEN, Status.BLOCKED, "ECONNREFUSED"),
    ]
    assert [t.key for t in tracker.changes(since=T0 + DAY, limit=10)] == [b]
    assert len(tracker.changes(since=0.0, limit=2)) == 2


def test_open_seen_within_retention_is_newly_blocked_but_longer_ago_is_never_open() -> None:
    within, beyond = path_key(make_path(port=135)), path_key(make_path(port=445))
    tracker = Tracker(k=3, retention=30 * DAY)
    feed(tracker, within, [OPEN])
    feed(tracker, beyond, [OPEN])
    # the exporter was down (or the path unplanned) for a while; then the path comes back blocked
    feed(tracker, within, [FILTERED] * 3, start=T0 + 30 * DAY - 3 * STEP)
    feed(tracker, beyond, [FILTERED] * 3, start=T0 + 31 * DAY)
    assert tracker.view(within).classification is Classification.NEWLY_BLOCKED
    assert tracker.view(beyond).classification is Classification.NEVER_OPEN
    assert tracker.view(beyond).first_open == T0  # remembered, but too old to vouch for


def test_clock_jumping_backwards_gives_no_negative_durations() -> None:
    tracker = Tracker(k=3)
    key = path_key(make_path())
    feed(tracker, key, [OPEN], start=T0)
    feed(tracker, key, [FILTERED] * 3, start=T0 - DAY)  # NTP stepped the clock back a day
    status = tracker.view(key)
    # seen open "in the future" is seen open recently: a change, not a never-open path
    assert status.classification is Classification.NEWLY_BLOCKED
    assert status.duration(T0 - 2 * DAY) == 0.0
    assert status.duration(status.state_since or 0.0) == 0.0
    assert status.duration(T0 - DAY + 2 * STEP + 10) == 10.0
    assert PathStatus("never-probed").duration(T0) == 0.0


# ---- the plan: indices, departures, grace ------------------------------------------------------------


def test_observe_by_index_follows_the_current_plan() -> None:
    a, b = make_path(port=135), make_path(port=445)
    tracker = Tracker(k=1)
    tracker.set_plan([a, b])
    tracker.record(1, FILTERED, T0)
    assert tracker.view(path_key(b)).blocked
    assert tracker.view(0).status is Status.PENDING
    tracker.set_plan([b, a])
    tracker.observe(1, OPEN, T0 + STEP)
    assert tracker.view(path_key(a)).status is Status.OPEN
    assert [p for p, _s in tracker.statuses()] == [b, a]


def test_paths_leaving_the_plan_age_out_after_the_grace_period(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    clock = Clock()
    stay, leave = make_path(target="ex2.corp.example"), make_path(target="ex3.corp.example")
    with Baseline(db) as store:
        tracker = Tracker(store, k=1, grace=3600, clock=clock)
        tracker.set_plan([stay, leave])
        tracker.observe(0, OPEN, T0)
        tracker.observe(1, FILTERED, T0)
        assert tracker.verdict().compliant is False
        tracker.set_plan([stay])
        # not probed any more, not judged, not turned into anything: just remembered for a while
        assert tracker.verdict().compliant is True
        assert tracker.view(path_key(leave)).blocked
        clock.now += 3599
        assert tracker.expire() == []
        clock.now += 1
        assert tracker.expire() == [path_key(leave)]
        assert tracker.view(path_key(leave)).status is Status.PENDING
    with Baseline(db) as store:
        assert set(store.load()) == {path_key(stay)}


def test_path_returning_within_grace_keeps_its_history() -> None:
    clock = Clock()
    p, other = make_path(), make_path(port=445)
    tracker = Tracker(k=3, grace=3600, clock=clock)
    tracker.set_plan([p, other])
    feed(tracker, 0, [OPEN])
    tracker.set_plan([other])  # the target flickered out of the inventory
    clock.now += 1800
    tracker.set_plan([p, other])
    clock.now += 3600
    assert tracker.expire() == []
    assert tracker.view(path_key(p)).first_open == T0
    results = feed(tracker, 0, [FILTERED] * 3, start=T0 + 2 * 3600)
    assert transitions(results) == [(Status.OPEN, Status.BLOCKED)]
    assert tracker.view(0).classification is Classification.NEWLY_BLOCKED


def test_grace_period_survives_a_monotonic_clock_going_backwards() -> None:
    clock = Clock(10_000.0)
    p = make_path()
    tracker = Tracker(grace=3600, clock=clock)
    tracker.set_plan([p])
    tracker.observe(0, OPEN, T0)
    tracker.set_plan([])
    clock.now = 5_000.0
    assert tracker.expire() == []
    clock.now = 10_000.0 + 3600
    assert tracker.expire() == [path_key(p)]


@pytest.mark.parametrize("planned", [[make_path()], []], ids=["another-plan", "empty-plan"])
def test_records_loaded_for_paths_no_longer_planned_age_out_too(
    tmp_path: pathlib.Path, planned: list[NetworkPath]
) -> None:
    db = tmp_path / "state.sqlite"
    old = make_path(target="decommissioned.corp.example")
    with Baseline(db) as store:
        Tracker(store).observe(path_key(old), OPEN, T0)
    clock = Clock()
    with Baseline(db) as store:
        tracker = Tracker(store, grace=60, clock=clock)
        tracker.set_plan(planned)  # an empty first plan too (an inventory that lists nothing yet)
        assert tracker.view(path_key(old)).status is Status.OPEN
        clock.now += 60
        assert tracker.expire() == [path_key(old)]


# ---- the verdict ------------------------------------------------------------------------------------


def test_edge_and_client_paths_do_not_count_toward_the_verdict() -> None:
    required = [
        make_path(port=135),
        make_path(target="dc1.corp.example", port=389, kind=PathKind.EXCHANGE_DC),
    ]
    excluded = [
        make_path(target="edge1.dmz.example", port=25, kind=PathKind.EDGE),
        make_path(port=443, kind=PathKind.CLIENT_EXCHANGE),
    ]
    tracker = Tracker(k=1)
    tracker.set_plan(required + excluded)
    for index in range(len(required)):
        tracker.observe(index, OPEN, T0)
    for index in range(len(required), len(required) + len(excluded)):
        tracker.observe(index, FILTERED, T0)
    assert all(status.blocked for _p, status in tracker.statuses()[2:])
    verdict = tracker.verdict()
    assert (verdict.compliant, verdict.required, verdict.open, verdict.blocked, verdict.unknown) == (
        True,
        2,
        2,
        0,
        0,
    )
    assert verdict.offending == ()


def test_blocked_required_path_makes_the_verdict_non_compliant_and_is_named() -> None:
    xx, xd = make_path(port=135), make_path(target="dc1.corp.example", port=389, kind=PathKind.EXCHANGE_DC)
    tracker = Tracker(k=1)
    tracker.set_plan([xx, xd, make_path(port=445)])  # the third still pending: a block decides anyway
    tracker.observe(0, OPEN, T0)
    tracker.observe(1, UNREACHABLE, T0)
    verdict = tracker.verdict()
    assert verdict.compliant is False
    assert verdict.offending == (xd,)
    assert (verdict.required, verdict.open, verdict.blocked, verdict.unknown) == (3, 1, 1, 1)


def test_verdict_is_unknown_while_a_required_path_is_pending() -> None:
    tracker = Tracker(k=3)
    probed, waiting = make_path(port=135), make_path(port=445)
    tracker.set_plan([probed, waiting])
    tracker.observe(0, OPEN, T0)
    verdict = tracker.verdict()
    assert verdict.compliant is None
    assert verdict.undetermined == (waiting,)
    feed(tracker, 1, [FILTERED, FILTERED])  # probed, but not yet judged either way
    assert tracker.verdict().compliant is None
    tracker.observe(1, OPEN, T0 + DAY)
    assert tracker.verdict().compliant is True


def test_verdict_is_unknown_when_a_required_path_only_had_our_own_errors_lately() -> None:
    tracker = Tracker(k=3)
    tracker.set_plan([make_path()])
    feed(tracker, 0, [OPEN, LOCAL, DNS])
    assert tracker.verdict().compliant is True  # two hiccups of ours do not make it unknown
    feed(tracker, 0, [LOCAL], start=T0 + DAY)
    verdict = tracker.verdict()
    assert (verdict.compliant, verdict.unknown) == (None, 1)
    tracker.observe(0, OPEN, T0 + 2 * DAY)
    assert tracker.verdict().compliant is True


def test_verdict_per_source_and_overall() -> None:
    good = make_path(source="ex1.corp.example")
    bad = make_path(source="ex3.corp.example")
    tracker = Tracker(k=1)
    tracker.set_plan([good, bad])
    tracker.observe(0, OPEN, T0)
    tracker.observe(1, FILTERED, T0)
    assert tracker.verdict("ex1.corp.example").compliant is True
    assert tracker.verdict("ex3.corp.example").offending == (bad,)
    assert tracker.verdict().compliant is False
    assert {s: v.compliant for s, v in tracker.verdicts().items()} == {
        "ex1.corp.example": True,
        "ex3.corp.example": False,
    }


def test_verdict_with_nothing_required_is_unknown() -> None:
    tracker = Tracker(k=1)
    tracker.set_plan([make_path(kind=PathKind.CLIENT_EXCHANGE)])
    tracker.observe(0, OPEN, T0)
    verdict = tracker.verdict()
    assert (verdict.compliant, verdict.required) == (None, 0)


# ---- persistence and restarts -----------------------------------------------------------------------


def test_blocked_path_is_not_reported_newly_blocked_again_after_restart(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    p = make_path()
    with Baseline(db) as store:
        tracker = Tracker(store, k=3)
        tracker.set_plan([p])
        assert transitions(feed(tracker, 0, [OPEN] + [FILTERED] * 3)) == [(Status.OPEN, Status.BLOCKED)]
    with Baseline(db) as store:
        tracker = Tracker(store, k=3)
        tracker.set_plan([p])
        assert tracker.view(0).classification is Classification.NEWLY_BLOCKED
        assert transitions(feed(tracker, 0, [FILTERED] * 5, start=T0 + 3600)) == []
        status = tracker.view(0)
        assert status.blocked
        assert status.classification is Classification.NEWLY_BLOCKED
        assert status.state_since == T0 + 3 * STEP
        assert tracker.transition_counts() == dict.fromkeys(TRANSITIONS, 0)
        assert [(t.from_status, t.to_status) for t in tracker.changes()] == [(Status.OPEN, Status.BLOCKED)]


def test_path_open_before_restart_and_blocked_after_is_a_new_transition(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    p = make_path()
    with Baseline(db) as store:
        tracker = Tracker(store, k=3)
        tracker.set_plan([p])
        feed(tracker, 0, [OPEN, OPEN])
    with Baseline(db) as store:
        tracker = Tracker(store, k=3)
        tracker.set_plan([p])
        results = feed(tracker, 0, [FILTERED] * 3, start=T0 + 600)
        assert results[-1] == Transition(
            T0 + 600 + 2 * STEP,
            path_key(p),
            Status.OPEN,
            Status.BLOCKED,
            Classification.NEWLY_BLOCKED,
            FILTERED.evidence,
        )
        assert tracker.transition_counts()[(Status.OPEN, Status.BLOCKED)] == 1


def test_flushed_records_survive_a_crash(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    crashed = Baseline(db)
    tracker = Tracker(crashed, k=1)
    key = path_key(make_path())
    feed(tracker, key, [OPEN, REFUSED])
    assert crashed.flush()
    tracker.observe(key, OPEN, T0 + DAY)  # staged, never flushed: lost with the process
    # the process dies here without close(); a new one opens the same file
    with Baseline(db) as store:
        status = store.load()[key]
        assert (status.status, status.classification, status.last_probe) == (
            Status.BLOCKED,
            Classification.NEWLY_BLOCKED,
            T0 + STEP,
        )
        assert [t.to_status for t in store.changes()] == [Status.BLOCKED]
    crashed.close()


def test_steadily_open_path_is_saved_hourly_not_on_every_probe(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    key = path_key(make_path())
    with Baseline(db) as store:
        tracker = Tracker(store)
        feed(tracker, key, [OPEN] * 100)  # 50 minutes of probes
        store.flush()
        assert store.load()[key].last_probe == T0
        tracker.observe(key, OPEN, T0 + 3600)
        store.flush()
        assert store.load()[key].last_probe == T0 + 3600
        assert tracker.view(key).last_open == T0 + 3600


def test_schema_version_is_recorded_and_the_file_uses_wal(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "sub" / "state.sqlite"
    with Baseline(db) as store:
        assert store.healthy
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"paths", "changes"} <= tables
    finally:
        conn.close()


def test_background_flusher_saves_without_an_explicit_flush(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    store = Baseline(db, flush_interval=0.02)
    store.start()
    try:
        Tracker(store).observe(path_key(make_path()), OPEN, T0)

        def saved() -> bool:
            with Baseline(db) as reader:
                return bool(reader.load())

        wait_until(saved, timeout=3.0, interval=0.02, message="the flusher never wrote the record")
    finally:
        store.close()


def test_changes_log_is_bounded_by_rows_and_by_age(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "state.sqlite"
    now = T0
    with Baseline(db, max_changes=50, max_change_age=DAY, clock=lambda: now) as store:
        tracker = Tracker(store, k=1)
        key = path_key(make_path())
        feed(tracker, key, [OPEN, REFUSED] * 100)  # 199 transitions
        assert store.flush()
        log = store.changes(since=0.0, limit=1000)
        assert len(log) == 50
        assert log[0].time == T0 + 199 * STEP  # the newest are kept
        now = T0 + 2 * DAY
        tracker.observe(key, OPEN, now)
        assert store.flush()
        assert [t.time for t in store.changes(since=0.0, limit=1000)] == [now]


# ---- a state file that cannot be trusted or written -------------------------------------------------


def test_corrupt_state_file_is_moved_aside_and_a_fresh_baseline_started(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.sqlite"
    garbage = b"this is not an sqlite database\x00\xff" * 200
    db.write_bytes(garbage)
    caplog.set_level(logging.WARNING, logger=BASELINE_LOG)
    with Baseline(db) as store:
        assert store.healthy
        assert store.moved_aside is not None
        assert store.moved_aside.name.startswith("state.sqlite.corrupt-")
        assert store.moved_aside.read_bytes() == garbage
        [line] = warnings_from_baseline(caplog, "is unreadable")
        assert line.levelno == logging.ERROR
        assert str(store.moved_aside) in line.getMessage()
        tracker = Tracker(store)
        assert tracker.view(path_key(make_path())).status is Status.PENDING
        tracker.observe(path_key(make_path()), OPEN, T0)
        assert store.flush()
    with Baseline(db) as store:
        assert list(store.load()) == [path_key(make_path())]


def test_state_file_from_a_newer_schema_is_moved_aside(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    caplog.set_level(logging.WARNING, logger=BASELINE_LOG)
    with Baseline(db) as store:
        assert store.moved_aside is not None and store.moved_aside.exists()
        assert store.healthy
        assert "newer exporter" in warnings_from_baseline(caplog, "is unreadable")[0].getMessage()


def test_unopenable_state_file_keeps_probing_in_memory_and_logs_once(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # root ignores permission bits, so make the file impossible to open instead: it is a directory
    db = tmp_path / "state.sqlite"
    db.mkdir()
    caplog.set_level(logging.WARNING, logger=BASELINE_LOG)
    store = Baseline(db)
    assert not store.healthy
    assert store.last_error is not None and "unable to open" in store.last_error
    tracker = Tracker(store, k=1)
    key = path_key(make_path())
    results = feed(tracker, key, [OPEN, REFUSED])
    assert transitions(results) == [(Status.OPEN, Status.BLOCKED)]
    for _ in range(3):
        assert store.flush() is False
    assert tracker.view(key).classification is Classification.NEWLY_BLOCKED
    assert [t.to_status for t in tracker.changes()] == [Status.BLOCKED]  # the log lives in memory
    assert len(warnings_from_baseline(caplog, "cannot write the state file")) == 1
    assert db.is_dir() and store.moved_aside is None  # not mistaken for a corrupt file
    store.close()


def test_read_only_mount_still_loads_the_baseline_and_keeps_probing_in_memory(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    writable, read_only = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    read_only.mkdir()
    key = path_key(make_path())
    with Baseline(writable / "state.sqlite") as store:
        Tracker(store).observe(key, OPEN, T0)
    # the suite runs as root (make test builds network namespaces); a missing capability is a failure
    assert os.geteuid() == 0 and shutil.which("mount"), "a read-only bind mount needs root and mount(8)"
    subprocess.run(["mount", "--bind", str(writable), str(read_only)], check=True, capture_output=True)
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(read_only)]
        subprocess.run(remount, check=True, capture_output=True)
        caplog.set_level(logging.WARNING, logger=BASELINE_LOG)
        store = Baseline(read_only / "state.sqlite")
        assert not store.healthy
        tracker = Tracker(store, k=1)
        assert tracker.view(key).status is Status.OPEN  # remembered from the read-only file
        [transition] = feed(tracker, key, [REFUSED], start=T0 + STEP)
        assert transition is not None and transition.classification is Classification.NEWLY_BLOCKED
        for _ in range(3):
            assert store.flush() is False
        assert len(warnings_from_baseline(caplog, "cannot write the state file")) == 1
        store.close()
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)


def test_full_disk_keeps_probing_logs_once_and_saves_when_space_returns(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.sqlite"
    caplog.set_level(logging.WARNING, logger=BASELINE_LOG)
    store = Baseline(db)
    assert store.flush()
    conn = store._conn
    assert conn is not None
    # SQLite's own size cap gives a real SQLITE_FULL, which a tmpfs or a quota would need privileges for
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    tracker = Tracker(store, k=1)
    keys = [path_key(make_path(port=port)) for port in range(1000, 1400)]
    for key in keys:
        tracker.observe(key, Outcome(State.UNREACHABLE, 0.001, "EHOSTUNREACH " + "x" * 400), T0)
    for _ in range(3):
        assert store.flush() is False
    assert not store.healthy
    assert store.last_error is not None and "full" in store.last_error
    assert len(warnings_from_baseline(caplog, "cannot write the state file")) == 1
    assert tracker.view(keys[-1]).blocked  # probing went on in memory
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.flush()
    assert health(store) == (True, None)
    assert len(warnings_from_baseline(caplog, "writable again")) == 1
    store.close()
    with Baseline(db) as reopened:
        assert len(reopened.load()) == len(keys)
        assert len(reopened.changes(limit=1000)) == len(keys)


def test_default_state_file_falls_back_to_the_user_state_dir(tmp_path: pathlib.Path) -> None:
    # root may write almost anywhere, so the system location is made impossible: its parent is a file
    (tmp_path / "not-a-dir").write_text("")
    unusable = tmp_path / "not-a-dir" / "exchange-firewall-exporter"
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert default_state_file(env, system_dir=unusable) == (
        tmp_path / "xdg" / "exchange-firewall-exporter" / "state.sqlite"
    )
    assert default_state_file({}, system_dir=unusable) == (
        pathlib.Path.home() / ".local" / "state" / "exchange-firewall-exporter" / "state.sqlite"
    )


def test_default_state_file_prefers_the_system_dir_and_creates_nothing(tmp_path: pathlib.Path) -> None:
    system = tmp_path / "var-lib" / "exchange-firewall-exporter"
    (tmp_path / "var-lib").mkdir()
    assert default_state_file({}, system_dir=system) == system / "state.sqlite"
    assert not system.exists()


# ---- what counts against Microsoft's rule ---------------------------------------------------------------


def test_a_port_nobody_listens_on_is_not_listening_never_a_violation() -> None:
    """The host's own RST on a path that never worked: the network delivered the packet."""
    listening, silent = make_path(port=135), make_path(port=139)
    tracker = Tracker(k=3)
    tracker.set_plan([listening, silent])
    feed(tracker, 0, [OPEN] * 3)
    feed(tracker, 1, [REFUSED] * 3)
    status = tracker.view(1)
    assert (status.status, status.classification) == (Status.BLOCKED, Classification.NOT_LISTENING)
    assert status.not_listening and not status.blocked
    verdict = tracker.verdict()
    assert (verdict.compliant, verdict.blocked, verdict.not_listening, verdict.offending) == (True, 0, 1, ())
    # a firewall that starts dropping it afterwards is a block again, and a violation
    feed(tracker, 1, [FILTERED], start=T0 + DAY)
    assert tracker.view(1).classification is Classification.NEVER_OPEN and tracker.view(1).blocked
    assert tracker.verdict().compliant is False


def test_an_open_path_that_turns_refused_is_newly_blocked_and_pages() -> None:
    """A stopped service or a device resetting it: both break Exchange, so a path that worked pages."""
    tracker = Tracker(k=3)
    tracker.set_plan([make_path(port=445)])
    feed(tracker, 0, [OPEN, REFUSED, REFUSED, REFUSED])
    status = tracker.view(0)
    assert status.classification is Classification.NEWLY_BLOCKED and status.blocked
    assert tracker.verdict().compliant is False


def test_an_observer_s_paths_are_reported_but_not_judged() -> None:
    """A monitoring host is a client: its firewall is legitimate, so its verdict is not applicable."""
    seen = dataclasses.replace(make_path(source="monitor.corp.example"), judged=False)
    judged = make_path(source="ex1.corp.example", port=445)
    tracker = Tracker(k=1)
    tracker.set_plan([seen, judged])
    tracker.observe(0, FILTERED, T0)
    tracker.observe(1, OPEN, T0)
    assert tracker.view(0).blocked  # reported as blocked ...
    observer = tracker.verdict("monitor.corp.example")
    assert (observer.compliant, observer.applicable) == (None, False)  # ... but not judged
    assert observer.reason.startswith("not applicable")
    assert tracker.verdict().compliant is True  # and it never makes the overall verdict false


# ---- what the verdicts' upkeep recomputes ------------------------------------------------------------


def test_verdicts_are_recomputed_only_when_something_they_read_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A steady organisation's probes move nothing a verdict reads, so the upkeep thread skips its
    O(paths) pass; a block, or our own errors reaching K, moves the generation and the verdict follows."""
    from exporter.state import recorder

    monkeypatch.setattr(recorder, "VERDICT_EVERY", 0.01)
    tracker = Tracker(k=2)
    tracker.set_plan([make_path(), make_path(port=445)])
    upkeep = recorder.Upkeep(tracker)
    computed: list[int] = []
    verdicts = tracker.verdicts

    def counting() -> dict[str, Verdict]:
        computed.append(tracker.generation)
        return verdicts()

    monkeypatch.setattr(tracker, "verdicts", counting)
    for index in (0, 1):
        feed(tracker, index, [OPEN])
    upkeep.start()
    try:
        wait_until(lambda: upkeep.verdicts()["ex1.corp.example"].compliant is True, 5.0)
        steady = tracker.generation
        time.sleep(0.1)  # the thread's first pass (the first verdict above may have come from the reader)
        runs = len(computed)
        feed(tracker, 0, [OPEN] * 20, start=T0 + 60)
        assert tracker.generation == steady  # confirming probes
        time.sleep(0.2)  # 20 periods
        assert len(computed) == runs  # nothing to recompute
        feed(tracker, 1, [FILTERED, FILTERED], start=T0 + 120)
        wait_until(lambda: upkeep.verdicts()["ex1.corp.example"].compliant is False, 5.0)
        blocked = tracker.generation
        feed(tracker, 0, [LOCAL, LOCAL], start=T0 + 180)
        assert tracker.generation == blocked + 1  # path 0 is unknown now: K of our own errors
        wait_until(lambda: upkeep.verdicts()["ex1.corp.example"].unknown == 1, 5.0)
    finally:
        upkeep.stop()
