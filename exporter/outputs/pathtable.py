"""The live table of path results, and the per-path part of the exposition, rendered incrementally.

Rendering 100k paths x 9 series with prometheus_client takes over a second, so each path keeps its
exposition lines cached: the state-dependent lines are rebuilt only when the state changes, the two
numeric lines on every outcome (a couple of f-strings, ~1 us, on the prober's thread). A scrape then only
joins cached strings, off the probing loop: each family keeps one list of its lines, index-aligned with
the paths, so a block of the exposition is one C-level join of a slice. A scrape copies the slices it needs
under a short lock that `record` also takes, so it never sees half of a path's update.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.outputs.gzipcat import Piece, assemble
from exporter.plan.planner import Path
from exporter.probes.outcome import STATES, Outcome, State
from exporter.state.baseline import Classification, PathStatus, Status

BLOCK = 4096  # paths per compressed piece

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
_FIELDS = (
    "up_line",
    "state_lines",
    "rtt_line",
    "ts_line",
    "blocked_line",
    "newly_line",
    "since_line",
    "open_line",
    "protocol_lines",
    "cert_line",
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_string(path: Path) -> str:
    values = (
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
    return ",".join(f'{name}="{escape_label(value)}"' for name, value in zip(LABELS, values, strict=True))


@dataclass(frozen=True, slots=True)
class _Seed:
    """A path's remembered status lines, exported until its first probe in this process."""

    blocked_line: str
    newly_line: str
    since_line: str
    open_line: str
    up_line: str = ""
    state_lines: str = ""
    rtt_line: str = ""
    ts_line: str = ""
    protocol_lines: str = ""
    cert_line: str = ""


def _status_lines(labels: str, status: PathStatus | None) -> tuple[str, str, str, str]:
    if status is None:
        return "", "", "", ""
    is_blocked = status.status is Status.BLOCKED
    is_new = is_blocked and status.classification is Classification.NEWLY_BLOCKED
    since = last_open = ""
    if status.state_since is not None:
        since = f"exchange_path_state_since_timestamp_seconds{{{labels}}} {status.state_since:.3f}\n"
    if status.last_open is not None:
        last_open = f"exchange_path_last_open_timestamp_seconds{{{labels}}} {status.last_open:.3f}\n"
    return (
        f"exchange_path_blocked{{{labels}}} {1 if is_blocked else 0}\n",
        f"exchange_path_newly_blocked{{{labels}}} {1 if is_new else 0}\n",
        since,
        last_open,
    )


def protocol_health(check: str, outcome: Outcome) -> list[tuple[str, int]]:
    """(check label, 1|0) for exchange_protocol_up: one per health page for https-health, else one."""
    details = dict(outcome.details)
    if check == "https-health":
        pages = sorted((k.split(":", 1)[1], v) for k, v in details.items() if k.startswith("health:"))
        return [(f"https-health:{page}", 1 if verdict == "healthy" else 0) for page, verdict in pages]
    spoke = outcome.state is State.OPEN and details.get("protocol") == "ok"
    if check.startswith("https-health:"):
        spoke = spoke and details.get("health") == "healthy"
    return [(check, 1 if spoke else 0)]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class PathResult:
    """The last outcome of one path, with its cached exposition lines."""

    outcome: Outcome
    wall: float  # unix time the outcome was recorded
    up_line: str
    state_lines: str
    rtt_line: str
    ts_line: str
    status: PathStatus | None = None  # the hysteresis view, when a tracker runs
    blocked_line: str = ""
    newly_line: str = ""
    since_line: str = ""
    open_line: str = ""
    protocol_lines: str = ""
    cert_line: str = ""


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _compressors() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="gzip")
        return _pool


def _piece(item: tuple[int, int, int, list[str]]) -> tuple[tuple[int, int], tuple[int, Piece]]:
    number, block, version, lines = item
    return (number, block), (version, Piece("".join(lines).encode("utf-8")))


class PathTable:
    """Results for a fixed list of paths (replace the table when the plan changes)."""

    def __init__(self, paths: Sequence[Path], previous: PathTable | None = None) -> None:
        self.paths = list(paths)
        self._labels = [label_string(p) for p in self.paths]
        self._results: list[PathResult | None] = [None] * len(self.paths)
        self._state_cache: list[tuple[State, str, str] | None] = [None] * len(self.paths)
        self.probed = 0  # paths with at least one result
        #: per family, each path's current lines ("" when it has none): a result's, else its seed's
        self._lines: list[list[str]] = [[""] * len(self.paths) for _ in _FIELDS]
        # per family and block of BLOCK paths: a version bumped whenever one of its lines changes, and
        # the compressed piece made at some version (see render_gzip)
        blocks = (len(self.paths) + BLOCK - 1) // BLOCK
        self._versions = [[0] * blocks for _ in _FIELDS]
        self._pieces: dict[tuple[int, int], tuple[int, Piece]] = {}
        self._lock = threading.Lock()  # record/seed vs a scrape's snapshot: one path's lines move together
        self.kinds = Counter(p.kind.value for p in self.paths)  # paths by kind, for exchange_paths
        if previous is not None:
            carried = {p.key: r for p, r in previous.items() if r is not None}
            for index, path in enumerate(self.paths):
                old = carried.get(path.key)
                if old is not None:  # re-recorded, so the cached lines carry the new labels
                    self.record(index, old.outcome, old.wall, old.status)

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, index: int, outcome: Outcome, wall: float, status: PathStatus | None = None) -> None:
        labels = self._labels[index]
        cached = self._state_cache[index]
        if cached is None or cached[0] is not outcome.state:
            up = f"exchange_path_up{{{labels}}} {1 if outcome.state is State.OPEN else 0}\n"
            states = "".join(
                f'exchange_path_state{{{labels},state="{s.value}"}} {1 if s is outcome.state else 0}\n'
                for s in STATES
            )
            cached = (outcome.state, up, states)
            self._state_cache[index] = cached
        rtt = outcome.rtt if outcome.rtt is not None else math.nan
        if self._results[index] is None:
            self.probed += 1
        blocked, newly, since, last_open = _status_lines(labels, status)
        path = self.paths[index]
        protocol = cert = ""
        if path.check != "tcp":
            protocol = "".join(
                f'exchange_protocol_up{{{labels},check="{escape_label(check)}"}} {value}\n'
                for check, value in protocol_health(path.check, outcome)
            )
        if outcome.cert_expiry is not None:
            cert = (
                f'exchange_tls_cert_expiry_timestamp_seconds{{target="{escape_label(path.target)}",'
                f'port="{path.port}",service="{escape_label(path.service)}"}} {outcome.cert_expiry:.0f}\n'
            )
        new = PathResult(
            outcome,
            wall,
            cached[1],
            cached[2],
            f"exchange_path_connect_seconds{{{labels}}} {_number(rtt)}\n",
            f"exchange_path_last_probe_timestamp_seconds{{{labels}}} {wall:.3f}\n",
            status,
            blocked,
            newly,
            since,
            last_open,
            protocol,
            cert,
        )
        block = index // BLOCK
        versions, lines = self._versions, self._lines
        with self._lock:
            self._results[index] = new
            for number, field in enumerate(_FIELDS):
                line = getattr(new, field)
                if lines[number][index] != line:
                    lines[number][index] = line
                    versions[number][block] += 1

    def seed(self, index: int, status: PathStatus) -> None:
        """Export a path's remembered status (from the baseline) before this process has probed it, so a
        restart does not make a blocked path's series vanish and its page resolve and fire again."""
        if status.status is Status.PENDING or self._results[index] is not None:
            return
        blocked, newly, since, last_open = _status_lines(self._labels[index], status)
        seed = _Seed(blocked, newly, since, last_open)
        with self._lock:
            for number, field in enumerate(_FIELDS):
                self._lines[number][index] = getattr(seed, field)
                self._versions[number][index // BLOCK] += 1

    def results(self) -> list[PathResult | None]:
        """A copy of the current results, index-aligned with `paths`."""
        return list(self._results)

    def items(self) -> Iterator[tuple[Path, PathResult | None]]:
        return zip(self.paths, self.results(), strict=True)

    def render_gzip(self, head: bytes) -> bytes:
        """`head` + render() as one gzip member, recompressing only the blocks whose lines changed since
        the last scrape (the state-dependent families rarely change; timestamps always do)."""
        changed: list[tuple[int, int, int, list[str]]] = []  # (family, block, version, its lines)
        with self._lock:  # copies references only: the prober waits a millisecond or two at most
            for number, family_versions in enumerate(self._versions):
                lines = self._lines[number]
                for block, version in enumerate(family_versions):
                    cached = self._pieces.get((number, block))
                    if cached is None or cached[0] != version:
                        changed.append((number, block, version, lines[block * BLOCK : (block + 1) * BLOCK]))
        # zlib releases the GIL while it compresses: the changed blocks are compressed on all cores
        built = _compressors().map(_piece, changed) if len(changed) > 1 else map(_piece, changed)
        for key, value in built:
            self._pieces[key] = value
        pieces = [Piece(head)]
        blocks = len(self._versions[0]) if self._versions else 0
        for number, (name, kind, help_text) in enumerate(FAMILIES):
            family = [self._pieces[(number, block)][1] for block in range(blocks)]
            if any(piece.size for piece in family):
                pieces.append(Piece(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()))
                pieces.extend(family)
        return assemble(pieces)

    def render(self) -> str:
        """The per-path families in the text exposition format (paths never probed are left out)."""
        with self._lock:
            snapshot = [list(lines) for lines in self._lines]
        parts: list[str] = []
        for (name, kind, help_text), lines in zip(FAMILIES, snapshot, strict=True):
            body = "".join(lines)
            if body:
                parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
                parts.append(body)
        return "".join(parts)
