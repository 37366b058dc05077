"""The baseline: what each path has been, persisted in one SQLite file so it survives restarts.

Stores the per-path records (`PathStatus`) and the transitions log (`Transition`), both defined in
status.py, and owns the file's schema and migrations, batched crash-safe writes, and what happens when
the file is corrupt or the disk refuses writes. It decides nothing about blocks: that is the tracker's
job (tracker.py).

Writes never happen on the caller's thread: `put()` and `add_change()` only stage records in memory, and
`flush()` (the background flusher, or whoever calls it) writes them in one transaction. WAL with
synchronous=NORMAL keeps the file consistent across a crash or power cut; at most the last flush
interval is lost, and the tracker re-learns that from the next probes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pathlib
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from exporter.probes.outcome import State
from exporter.state.status import Classification, PathStatus, Status, Transition
from exporter.threads import name_this_thread

log = logging.getLogger(__name__)

APP_DIR = "exchange-firewall-exporter"
STATE_FILE_NAME = "state.sqlite"
SYSTEM_STATE_DIR = pathlib.Path("/var/lib") / APP_DIR

FLUSH_INTERVAL = 5.0  # seconds between flushes
FLUSH_BATCH = 5000  # staged path records that wake the flusher early
MAX_CHANGES = 10_000  # rows kept in the transitions log
MAX_CHANGE_AGE = 30 * 86400.0  # seconds a transition is kept
MAX_EVIDENCE = 500  # characters of evidence stored; banners can be long


def default_state_file(
    env: Mapping[str, str] | None = None, system_dir: pathlib.Path | None = None
) -> pathlib.Path:
    """Where the state lives when `--state.file` is not given.

    The system location (/var/lib/exchange-firewall-exporter, %PROGRAMDATA% on Windows) when we can
    write there, i.e. when running as a service; else the user's state directory ($XDG_STATE_HOME,
    ~/.local/state, %LOCALAPPDATA%).
    """
    environ = os.environ if env is None else env
    if system_dir is None:
        program_data = environ.get("PROGRAMDATA")
        windows = sys.platform == "win32" and program_data is not None
        system_dir = pathlib.Path(str(program_data)) / APP_DIR if windows else SYSTEM_STATE_DIR
    if _writable_dir(system_dir):
        return system_dir / STATE_FILE_NAME
    user = environ.get("LOCALAPPDATA") if sys.platform == "win32" else environ.get("XDG_STATE_HOME")
    base = pathlib.Path(user) if user else pathlib.Path.home() / ".local" / "state"
    return base / APP_DIR / STATE_FILE_NAME


def _writable_dir(directory: pathlib.Path) -> bool:
    """Whether we could create the state file there (the Baseline creates a missing directory)."""
    probe = directory if directory.exists() else directory.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


# Each entry takes the file from user_version i to i+1. Append, never edit: files in the field are at
# every version. Columns are plain (no generated columns) so SQLite 3.26 (RHEL 8) can run them.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE paths (
        key TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        blocked INTEGER NOT NULL,
        classification TEXT NOT NULL,
        state_since REAL,
        first_probe REAL,
        first_seen_open REAL,
        last_seen_open REAL,
        last_state TEXT,
        last_probe REAL,
        consecutive_non_open INTEGER NOT NULL DEFAULT 0,
        consecutive_open INTEGER NOT NULL DEFAULT 0,
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        evidence TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        key TEXT NOT NULL,
        from_status TEXT NOT NULL,
        to_status TEXT NOT NULL,
        classification TEXT NOT NULL,
        evidence TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX changes_time ON changes(time);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_PATH_COLUMNS = (
    "key, status, blocked, classification, state_since, first_probe, first_seen_open, last_seen_open, "
    "last_state, last_probe, consecutive_non_open, consecutive_open, consecutive_errors, evidence"
)
# the column list is a constant, never input
_UPSERT = f"INSERT OR REPLACE INTO paths ({_PATH_COLUMNS}) VALUES ({', '.join('?' * 14)})"  # noqa: S608
_INSERT_CHANGE = (
    "INSERT INTO changes (time, key, from_status, to_status, classification, evidence) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

# SQLite primary result codes (the low byte of an extended code)
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_KEEP_CONNECTION = frozenset({_SQLITE_FULL, _SQLITE_BUSY, _SQLITE_LOCKED})  # a reconnect would not help


class _Unreadable(Exception):
    """The file is not a baseline we can use (corrupt, or written by a newer schema)."""


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return f"{name}: {exc}"


def _row(status: PathStatus) -> tuple[object, ...]:
    return (
        status.key,
        status.status.value,
        int(status.blocked),
        status.classification.value,
        status.state_since,
        status.first_probe,
        status.first_open,
        status.last_open,
        status.last_state.value if status.last_state is not None else None,
        status.last_probe,
        status.consecutive_non_open,
        status.consecutive_open,
        status.consecutive_errors,
        status.evidence[:MAX_EVIDENCE],
    )


def _status(row: tuple[object, ...]) -> PathStatus:
    (
        key,
        status,
        _blocked,
        classification,
        since,
        first_probe,
        first_open,
        last_open,
        last_state,
        last_probe,
        non_open,
        opens,
        errors,
        evidence,
    ) = row

    def when(value: object) -> float | None:
        return None if value is None else float(value)  # type: ignore[arg-type]

    return PathStatus(
        key=str(key),
        status=Status(str(status)),
        classification=Classification(str(classification)),
        state_since=when(since),
        first_probe=when(first_probe),
        first_open=when(first_open),
        last_open=when(last_open),
        last_state=None if last_state is None else State(str(last_state)),
        last_probe=when(last_probe),
        consecutive_non_open=int(non_open),  # type: ignore[call-overload]
        consecutive_open=int(opens),  # type: ignore[call-overload]
        consecutive_errors=int(errors),  # type: ignore[call-overload]
        evidence=str(evidence),
    )


def _transition(row: tuple[object, ...]) -> Transition:
    when, key, from_status, to_status, classification, evidence = row
    return Transition(
        time=float(when),  # type: ignore[arg-type]
        key=str(key),
        from_status=Status(str(from_status)),
        to_status=Status(str(to_status)),
        classification=Classification(str(classification)),
        evidence=str(evidence),
    )


class Baseline:
    """The SQLite-backed store of path records and transitions (or memory only when `path` is None).

    Never raises on I/O trouble: a corrupt file is moved aside and a fresh one started; an unwritable
    one leaves the baseline in memory, `healthy` False and `last_error` saying why, and every flush
    tries again. Thread-safe: stage from one thread, flush from another, read changes from a third.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        flush_batch: int = FLUSH_BATCH,
        max_changes: int = MAX_CHANGES,
        max_change_age: float = MAX_CHANGE_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = pathlib.Path(path) if path is not None else None
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.max_changes = max_changes
        self.max_change_age = max_change_age
        self._clock = clock  # wall clock, for the age of the transitions log
        #: where a corrupt file was moved to, when that happened
        self.moved_aside: pathlib.Path | None = None
        self.last_error: str | None = None

        self._staged_lock = threading.Lock()  # guards the staged writes below
        self._dirty: dict[str, PathStatus] = {}
        self._gone: set[str] = set()
        self._staged_changes: collections.deque[tuple[int, Transition]] = collections.deque(
            maxlen=max_changes
        )
        self._seq = 0

        self._db_lock = threading.Lock()  # guards the connection; taken before _staged_lock, never after
        self._conn: sqlite3.Connection | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.path is not None:
            self._open(check=True)

    # ---- state -------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the file cannot be opened or written; the baseline then lives in memory."""
        return self.last_error is None

    @property
    def persistent(self) -> bool:
        return self.path is not None

    # ---- staging: cheap, called on the prober's thread ----------------------------------------------

    def put(self, status: PathStatus) -> None:
        """Stage a path record for the next flush (the newest record of a key wins)."""
        if self.path is None:
            return  # memory only: the tracker's own records are all there is
        with self._staged_lock:
            self._dirty[status.key] = status
            self._gone.discard(status.key)
            full = len(self._dirty) >= self.flush_batch
        if full:
            self._wake.set()

    def forget(self, keys: Iterable[str]) -> None:
        """Stage the removal of paths (targets that left the inventory and aged out)."""
        if self.path is None:
            return
        with self._staged_lock:
            for key in keys:
                self._dirty.pop(key, None)
                self._gone.add(key)

    def add_change(self, transition: Transition) -> None:
        """Stage a transition for the changes log. Kept in memory (bounded) until flushed."""
        with self._staged_lock:
            self._seq += 1
            self._staged_changes.append((self._seq, transition))

    # ---- reading ------------------------------------------------------------------------------------

    def load(self) -> dict[str, PathStatus]:
        """Every stored path record. Empty for a fresh, memory-only or unreadable baseline."""
        with self._db_lock:
            if self._conn is not None:
                try:
                    return self._read_paths(self._conn)
                except sqlite3.Error as exc:
                    self._failed(exc)
                    return {}
        return self._load_read_only()

    def changes(self, since: float = 0.0, limit: int = 100) -> list[Transition]:
        """Transitions at or after unix time `since`, newest first (in the order they happened, so a
        clock that jumped back cannot reorder them), at most `limit`; unflushed ones included."""
        if limit <= 0:
            return []
        with self._db_lock:
            with self._staged_lock:
                staged = [t for _seq, t in reversed(self._staged_changes) if t.time >= since]
            found = staged[:limit]
            if self._conn is not None and len(found) < limit:
                try:
                    rows = self._conn.execute(
                        "SELECT time, key, from_status, to_status, classification, evidence FROM changes "
                        "WHERE time >= ? ORDER BY id DESC LIMIT ?",
                        (since, limit - len(found)),
                    ).fetchall()
                except sqlite3.Error as exc:
                    self._failed(exc)
                    rows = []
                found.extend(_transition(tuple(row)) for row in rows)
        return found

    # ---- writing ------------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write everything staged in one transaction. True when it is on disk (or there is no disk).

        On failure nothing staged is lost: it stays staged for the next flush (path records are bounded
        by the number of paths, transitions by `max_changes`).
        """
        if self.path is None:
            with self._staged_lock:
                self._dirty.clear()
                self._gone.clear()
            return True
        with self._db_lock:
            with self._staged_lock:
                dirty, self._dirty = self._dirty, {}
                gone, self._gone = self._gone, set()
                changes = list(self._staged_changes)
            conn = self._conn if self._conn is not None else self._open(check=False)
            if conn is None:
                self._restage(dirty, gone)
                return False
            try:
                self._write(conn, dirty, gone, [t for _seq, t in changes])
            except sqlite3.Error as exc:
                self._restage(dirty, gone)
                if _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    # corrupted under us: start a fresh file; the tracker re-puts every path within
                    # its refresh interval, so the fresh file fills up again on its own
                    self._close_connection()
                    self._move_aside(_describe(exc))
                else:
                    self._failed(exc)
                return False
            if changes:
                last = changes[-1][0]
                with self._staged_lock:
                    while self._staged_changes and self._staged_changes[0][0] <= last:
                        self._staged_changes.popleft()
            self._recovered()
            return True

    def start(self) -> None:
        """Flush in a background thread every `flush_interval` seconds, or sooner for a full batch."""
        if self._thread is not None or self.path is None:
            return
        self._stop.clear()

        def run() -> None:
            name_this_thread("ef-flush")
            while not self._stop.is_set():
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                try:
                    self.flush()
                except Exception:  # never let the flusher die: the baseline would silently stop saving
                    log.exception("flushing the state file failed unexpectedly")

        self._thread = threading.Thread(target=run, name="baseline-flush", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher, write what is staged, and close the file."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(10.0)
            self._thread = None
        self.flush()
        with self._db_lock:
            self._close_connection()

    def __enter__(self) -> Baseline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------------

    def _open(self, *, check: bool) -> sqlite3.Connection | None:
        """Open (creating and migrating) the file; a corrupt one is moved aside. None on failure, which
        is then recorded in `last_error`."""
        assert self.path is not None
        try:
            self._conn = self._connect(check=check)
        except _Unreadable as exc:
            self._move_aside(str(exc))
        except sqlite3.DatabaseError as exc:
            if _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                self._move_aside(_describe(exc))
            else:
                self._failed(exc)
        except OSError as exc:
            self._failed(exc)
        return self._conn

    def _move_aside(self, reason: str) -> None:
        """Rename a corrupt file (and its WAL and shared-memory files) out of the way; start afresh."""
        assert self.path is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            self.path.rename(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(target.with_name(target.name + suffix))
        except OSError as exc:
            self._failed(OSError(f"{reason}; and it could not be moved aside: {exc}"))
            return
        self.moved_aside = target
        log.error(
            "state file %s is unreadable (%s): moved it aside to %s and started a fresh baseline; "
            "paths will be re-learned from the next probes",
            self.path,
            reason,
            target,
        )
        try:
            self._conn = self._connect(check=False)
        except (sqlite3.Error, OSError, _Unreadable) as exc:
            self._failed(exc)

    def _connect(self, *, check: bool) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if check:
                problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise _Unreadable(f"integrity check failed: {'; '.join(problems[:3])}")
            if version > SCHEMA_VERSION:
                raise _Unreadable(
                    f"schema version {version} was written by a newer exporter (this one knows "
                    f"{SCHEMA_VERSION})"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                self._migrate(conn, target)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, target: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("state file migrated to schema version %d", target)

    def _write(
        self,
        conn: sqlite3.Connection,
        dirty: dict[str, PathStatus],
        gone: set[str],
        changes: list[Transition],
    ) -> None:
        if not dirty and not gone and not changes:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if dirty:
                conn.executemany(_UPSERT, [_row(s) for s in dirty.values()])
            if gone:
                conn.executemany("DELETE FROM paths WHERE key = ?", [(key,) for key in gone])
            if changes:
                conn.executemany(
                    _INSERT_CHANGE,
                    [
                        (
                            t.time,
                            t.key,
                            t.from_status.value,
                            t.to_status.value,
                            t.classification.value,
                            t.evidence[:MAX_EVIDENCE],
                        )
                        for t in changes
                    ],
                )
                conn.execute("DELETE FROM changes WHERE time < ?", (self._clock() - self.max_change_age,))
                conn.execute(
                    "DELETE FROM changes WHERE id <= (SELECT MAX(id) FROM changes) - ?", (self.max_changes,)
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                    conn.execute("ROLLBACK")
            raise

    def _restage(self, dirty: dict[str, PathStatus], gone: set[str]) -> None:
        with self._staged_lock:
            for key, status in dirty.items():
                if key not in self._gone:
                    self._dirty.setdefault(key, status)  # a newer record staged meanwhile wins
            for key in gone:
                if key not in self._dirty:
                    self._gone.add(key)

    def _failed(self, exc: BaseException) -> None:
        """Record a failure; log it only when the condition changes, not on every flush."""
        if not (isinstance(exc, sqlite3.Error) and _code(exc) in _KEEP_CONNECTION):
            # read-only file, I/O error, vanished directory: a fresh connection may succeed later
            self._close_connection()
        message = _describe(exc)
        if message != self.last_error:
            log.warning(
                "cannot write the state file %s (%s); probing continues with the baseline in memory "
                "and saving is retried every %gs",
                self.path,
                message,
                self.flush_interval,
            )
            self.last_error = message

    def _close_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _recovered(self) -> None:
        if self.last_error is not None:
            log.warning("state file %s is writable again; the baseline is saved", self.path)
            self.last_error = None

    @staticmethod
    def _read_paths(conn: sqlite3.Connection) -> dict[str, PathStatus]:
        records: dict[str, PathStatus] = {}
        skipped = 0
        for row in conn.execute(f"SELECT {_PATH_COLUMNS} FROM paths"):  # noqa: S608
            try:
                status = _status(tuple(row))
            except (ValueError, TypeError):
                skipped += 1
                continue
            records[status.key] = status
        if skipped:
            log.warning("ignored %d unreadable path records in the state file", skipped)
        return records

    def _load_read_only(self) -> dict[str, PathStatus]:
        """The file exists but cannot be opened for writing (a read-only mount): still use what it
        remembers, as of its last checkpoint."""
        if self.path is None or not self.path.is_file():
            return {}
        try:
            # immutable: no locks and no -shm file, which a read-only directory could not hold
            uri = f"{self.path.absolute().as_uri()}?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error:
            return {}
        try:
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
                return {}
            return self._read_paths(conn)
        except sqlite3.Error:
            return {}
        finally:
            conn.close()
