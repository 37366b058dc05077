"""The per-path part of the Prometheus exposition, rendered from the results table's columns: a listener
of the table that only counts what changed.

Nothing is rendered while probing: the prober tells `recorded(index, changed)` which parts of a path
changed, and that bumps a version of the path's block (BLOCK paths) in each family it touches. A scrape
copies the columns it reads (`ResultTable.snapshot`, a few memcpy under the table's lock, so one path's
lines never mix two probes) and renders each family a block at a time. The gzip exposition keeps every
block's compressed piece and renders and recompresses only the blocks whose version moved since the
last scrape: the state families rarely change, the timestamp families on every probe. A plain scrape
is a stream of those blocks, made as the client reads them.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from exporter.outputs.gzipcat import Piece, assemble
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import STATES, Outcome, State
from exporter.state.results import ResultTable, Snapshot
from exporter.state.status import BLOCKED as S_BLOCKED
from exporter.state.status import (
    CHANGED_DETAILS,
    CHANGED_LAST_OPEN,
    CHANGED_STATE,
    CHANGED_STATUS,
    PENDING,
)
from exporter.state.status import NEWLY as S_NEWLY
from exporter.state.status import NOT_LISTENING as S_NOT_LISTENING
from exporter.threads import name_this_thread

BLOCK = 1024  # paths per compressed piece
IN_FLIGHT = 4  # rendered blocks waiting to be compressed, at most

LABELS = ("source", "source_site", "target", "target_site", "target_role", "port", "proto", "service", "kind")

FAMILIES = (
    ("exchange_path_up", "gauge", "1 if the last probe of the path found it open, else 0."),
    (
        "exchange_path_state",
        "gauge",
        "Current state of the path, one-hot over state (open, refused, filtered, unreachable, dns_error, "
        "local_error).",
    ),
    ("exchange_path_connect_seconds", "gauge", "Time of the last probe: to the answer, or to giving up."),
    ("exchange_path_last_probe_timestamp_seconds", "gauge", "Unix time of the last completed probe."),
    (
        "exchange_path_blocked",
        "gauge",
        "1 when the path is blocked after hysteresis (K non-open probes in a row), else 0.",
    ),
    (
        "exchange_path_newly_blocked",
        "gauge",
        "1 when the path is blocked and was seen open within the retention window (page on this).",
    ),
    (
        "exchange_path_state_since_timestamp_seconds",
        "gauge",
        "Unix time the path entered its current status (pending, open or blocked).",
    ),
    ("exchange_path_last_open_timestamp_seconds", "gauge", "Unix time the path was last seen open."),
    (
        "exchange_path_not_listening",
        "gauge",
        "1 when the target host itself refused a path that never worked (nothing listens there: not a "
        "firewall, never a violation); absent otherwise.",
    ),
    (
        "exchange_protocol_up",
        "gauge",
        "1 when the service on the path spoke its protocol correctly (DNS, Kerberos, CLDAP, NTP, LDAP, SMTP, "
        "SMB, RPC endpoint mapper, each Exchange health page), else 0; by check.",
    ),
    (
        "exchange_tls_cert_expiry_timestamp_seconds",
        "gauge",
        "Not-after of the TLS certificate the target presented on the port (LDAPS, SMTP STARTTLS, HTTPS).",
    ),
)
# the index of each family in FAMILIES (and in a plan's line lists)
(UP, STATE, RTT, TS, BLOCKED, NEWLY, SINCE, LAST_OPEN, NOT_LISTENING, PROTOCOL, CERT) = range(len(FAMILIES))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


#: labels only a path that has them carries: its address family (ipv4|ipv6; absent when the name is
#: resolved at probe time) and, for a further address of a target (a DAG replication network), the address
OPTIONAL_LABELS = ("family", "endpoint")


def label_values(path: NetworkPath) -> tuple[str, ...]:
    """The values of LABELS for `path`, in order."""
    return (
        path.source,
        path.source_site,
        path.target,
        path.target_site,
        path.target_role,
        str(path.port),
        path.proto,
        path.service,
        path.kind.value,
    )


#: how many of LABELS (from the start) describe the source and the target host; the rest the port
_HOST_LABELS = 5


def label_parts(path: NetworkPath) -> tuple[str, str]:
    """The path's label string in two parts: the source and target host (shared by every port of a
    target), then the port, service and kind (shared by many targets). head + tail is the whole."""
    pairs = [
        f'{name}="{escape_label(value)}"' for name, value in zip(LABELS, label_values(path), strict=True)
    ]
    tail = ",".join(pairs[_HOST_LABELS:])
    for name, value in zip(OPTIONAL_LABELS, (path.family, path.endpoint), strict=True):
        if value:
            tail += f',{name}="{escape_label(value)}"'
    return ",".join(pairs[:_HOST_LABELS]) + ",", tail


def protocol_health(check: str, outcome: Outcome) -> list[tuple[str, int]]:
    """(check label, 1|0) for exchange_protocol_up: one per sub-check the probe reported (each health
    page of https-health), else one for the check itself."""
    if outcome.subchecks:
        return [(f"{check}:{name}", 1 if ok else 0) for name, ok in outcome.subchecks]
    return [(check, 1 if outcome.state is State.OPEN and outcome.protocol_ok else 0)]


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    return repr(float(value))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _compressors() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=min(4, os.cpu_count() or 1),
                thread_name_prefix="gzip",
                initializer=name_this_thread,
                initargs=("ef-gzip",),
            )
        return _pool


def _compress(text: str) -> Piece:
    return Piece(text.encode("utf-8"))


#: a path's exchange_path_state lines in each state, as the pieces between its label strings: one
#: `labels.join(pieces)` makes all six
_STATE_PIECES = {
    state: (
        "exchange_path_state{",
        *(f',state="{s.value}"}} {1 if s is state else 0}\nexchange_path_state{{' for s in STATES[:-1]),
        f',state="{STATES[-1].value}"}} {1 if STATES[-1] is state else 0}\n',
    )
    for state in STATES
}
_NAMES = [name for name, _kind, _help in FAMILIES]


def _render(number: int, plan: _PlanBlocks, snap: Snapshot, start: int, stop: int) -> str:
    """Family `number`'s lines of paths start..stop, from the snapshot's columns."""
    labels = [head + tail for head, tail in zip(plan.heads[start:stop], plan.tails[start:stop], strict=True)]
    outcomes = snap.outcomes[start:stop]
    rows = zip(labels, outcomes, strict=True)
    name = _NAMES[number]
    if number == UP:
        return "".join([f"{name}{{{lab}}} {1 if o.state is State.OPEN else 0}\n" for lab, o in rows if o])
    if number == STATE:
        return "".join([lab.join(_STATE_PIECES[o.state]) for lab, o in rows if o])
    if number == RTT:
        return "".join([f"{name}{{{lab}}} {_number(o.rtt)}\n" for lab, o in rows if o])
    if number == TS:
        walls = snap.wall[start:stop]
        return "".join([f"{name}{{{lab}}} {w:.3f}\n" for (lab, o), w in zip(rows, walls, strict=True) if o])
    if number == PROTOCOL:
        return "".join(
            f'{name}{{{lab},check="{escape_label(check)}"}} {value}\n'
            for (lab, o), p in zip(rows, plan.paths[start:stop], strict=True)
            if o and p.check != "tcp"
            for check, value in protocol_health(p.check, o)
        )
    if number == CERT:
        return "".join(
            _cert_line(p, o.cert_expiry)
            for o, p in zip(outcomes, plan.paths[start:stop], strict=True)
            if o and o.cert_expiry is not None
        )
    status, classification = snap.status, snap.classification
    if status is None or classification is None or snap.since is None or snap.last_open is None:
        return ""  # no tracker: no status
    # a path has status lines once probed here, or when a status is remembered for it
    shown = [(lab, i) for i, (lab, o) in enumerate(rows, start) if o or status[i] != PENDING]
    if number in (BLOCKED, NEWLY, NOT_LISTENING):
        blocked = [(lab, status[i] == S_BLOCKED, classification[i]) for lab, i in shown]
        if number == BLOCKED:  # by the network: a port nobody listens on is not
            return "".join([f"{name}{{{lab}}} {int(b and c != S_NOT_LISTENING)}\n" for lab, b, c in blocked])
        if number == NEWLY:
            return "".join([f"{name}{{{lab}}} {int(b and c == S_NEWLY)}\n" for lab, b, c in blocked])
        return "".join([f"{name}{{{lab}}} 1\n" for lab, b, c in blocked if b and c == S_NOT_LISTENING])
    times = snap.since if number == SINCE else snap.last_open
    return "".join([f"{name}{{{lab}}} {times[i]:.3f}\n" for lab, i in shown if times[i] == times[i]])


def _cert_line(path: NetworkPath, expiry: float) -> str:
    where = f',family="{path.family}"' if path.family else ""
    where += f',endpoint="{escape_label(path.endpoint)}"' if path.endpoint else ""
    return (
        f'exchange_tls_cert_expiry_timestamp_seconds{{target="{escape_label(path.target)}",'
        f'port="{path.port}",service="{escape_label(path.service)}"{where}}} {expiry:.0f}\n'
    )


#: the families each CHANGED_* bit of `recorded` touches (connect time and probe time: every probe)
_TOUCHED = {
    changed: (
        RTT,
        TS,
        *((UP, STATE) if changed & CHANGED_STATE else ()),
        *((BLOCKED, NEWLY, SINCE, NOT_LISTENING) if changed & CHANGED_STATUS else ()),
        *((LAST_OPEN,) if changed & CHANGED_LAST_OPEN else ()),
        *((PROTOCOL,) if changed & (CHANGED_STATE | CHANGED_DETAILS) else ()),
        *((CERT,) if changed & CHANGED_DETAILS else ()),
    )
    for changed in range(16)
}


class _PlanBlocks:
    """One plan's label strings, and per family and block of BLOCK paths a version (bumped whenever
    one of its lines may have changed) and the compressed piece last made of it."""

    def __init__(self, table: ResultTable) -> None:
        self.table = table
        self.paths = table.paths
        # each path's label string as two shared parts: a few thousand strings for 100k paths, not 100k
        # strings of ~250 characters (25 MiB); a scrape joins them a block at a time
        shared: dict[str, str] = {}
        self.heads: list[str] = []
        self.tails: list[str] = []
        for path in self.paths:
            head, tail = label_parts(path)
            self.heads.append(shared.setdefault(head, head))
            self.tails.append(shared.setdefault(tail, tail))
        blocks = (len(self.paths) + BLOCK - 1) // BLOCK
        self.versions = [[0] * blocks for _ in FAMILIES]
        self.pieces: dict[tuple[int, int], tuple[int, Piece]] = {}

    def touch(self, index: int, changed: int) -> None:
        block = index // BLOCK
        versions = self.versions
        for number in _TOUCHED[changed & 15]:
            versions[number][block] += 1


class PathExposition:
    """The per-path families of /metrics, kept up to date from the results as they are recorded."""

    def __init__(self) -> None:
        self._plan = _PlanBlocks(ResultTable([]))
        self._joined: tuple[PathExposition, ...] = ()

    def join(self, others: Iterable[PathExposition]) -> None:
        """Serve `others`' paths too, after this one's in each family: agents in this process (the demo's
        mesh) scraped through one /metrics. Their series differ by their `source` label."""
        self._joined = tuple(others)

    # ---- ResultListener (the prober's thread) ------------------------------------------------------
    def attach(self, table: ResultTable) -> None:
        self._plan = _PlanBlocks(table)

    def recorded(self, index: int, changed: int) -> None:
        self._plan.touch(index, changed)

    # ---- scrapes (any thread) ----------------------------------------------------------------------
    def render_gzip(self, head: bytes) -> bytes:
        """`head` + render() as one gzip member, re-rendering and recompressing only the blocks whose
        lines changed since the last scrape (the state-dependent families rarely change; timestamps
        always do)."""
        parts = [one._family_pieces() for one in (self, *self._joined)]
        pieces = [Piece(head)]
        for number, (name, kind, help_text) in enumerate(FAMILIES):
            family = [piece for part in parts for piece in part[number]]
            if any(piece.size for piece in family):
                pieces.append(Piece(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()))
                pieces.extend(family)
        return assemble(pieces)

    def _family_pieces(self) -> list[list[Piece]]:
        """Each family's compressed blocks of this plan, the changed ones re-rendered and recompressed."""
        plan = self._plan
        # the versions and the values at one moment: the recorder writes a path and bumps its blocks
        # under the same lock, so a piece never mixes two probes of a path, and a line written after
        # this moment bumps its block past the version its piece is kept under
        with plan.table.lock:
            versions = [list(family) for family in plan.versions]
            snap = plan.table.copy_columns()
        n = len(plan.paths)
        # rendered here, one block at a time (one Python thread competing with the prober for the
        # interpreter, never the whole pool); compressed on the pool, where zlib releases the GIL, with at
        # most IN_FLIGHT rendered blocks waiting, so a cold scrape never holds the whole text at once
        pool = _compressors()
        pending: deque[tuple[tuple[int, int], int, Future[Piece]]] = deque()
        for number, family_versions in enumerate(versions):
            for block, version in enumerate(family_versions):
                cached = plan.pieces.get((number, block))
                if cached is None or cached[0] != version:
                    start = block * BLOCK
                    text = _render(number, plan, snap, start, min(start + BLOCK, n))
                    pending.append(((number, block), version, pool.submit(_compress, text)))
                    while len(pending) > IN_FLIGHT:
                        key, done_version, piece = pending.popleft()
                        plan.pieces[key] = (done_version, piece.result())
        for key, done_version, piece in pending:
            plan.pieces[key] = (done_version, piece.result())
        blocks = len(versions[0]) if versions else 0
        return [
            [plan.pieces[(number, block)][1] for block in range(blocks)] for number in range(len(FAMILIES))
        ]

    def render(self) -> str:
        """The per-path families in the text exposition format (paths never probed are left out)."""
        return b"".join(self.render_blocks()).decode("utf-8")

    def render_blocks(self) -> Iterator[bytes]:
        """render(), as a sequence of small byte strings: each a family's header or BLOCK paths' lines of
        it, rendered when it is asked for, so a plain scrape of 100k paths is a stream of short steps (a
        thread serving it lets the probing thread run between them), never one 300 MB string."""
        plans = [(one._plan, one._plan.table.snapshot()) for one in (self, *self._joined)]
        for number, (name, kind, help_text) in enumerate(FAMILIES):
            header = False
            for plan, snap in plans:
                n = len(plan.paths)
                for start in range(0, n, BLOCK):
                    body = _render(number, plan, snap, start, min(start + BLOCK, n))
                    if not body:
                        continue
                    if not header:
                        header = True
                        yield f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()
                    yield body.encode("utf-8")
