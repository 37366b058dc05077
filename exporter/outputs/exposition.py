"""The per-path part of the Prometheus exposition, rendered incrementally: a listener of the results table.

Rendering 100k paths x 9 series with prometheus_client takes over a second, so each path keeps its
exposition lines cached: the state-dependent lines are rebuilt only when the state changes, the two
numeric lines on every outcome (a couple of f-strings, ~1 us, on the prober's thread). A scrape then only
joins cached strings, off the probing loop: each family keeps one list of its lines, index-aligned with
the paths, so a block of the exposition is one C-level join of a slice. A scrape copies the slices it needs
under a short lock that `recorded` also takes, so it never sees half of a path's update.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from exporter.outputs.gzipcat import Piece, assemble
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import STATES, Outcome, State
from exporter.state.results import PathResult, ResultTable
from exporter.state.status import Classification, PathStatus

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


def label_string(path: NetworkPath) -> str:
    values = label_values(path)
    text = ",".join(f'{name}="{escape_label(value)}"' for name, value in zip(LABELS, values, strict=True))
    for name, value in zip(OPTIONAL_LABELS, (path.family, path.endpoint), strict=True):
        if value:
            text += f',{name}="{escape_label(value)}"'
    return text


def _status_lines(labels: str, status: PathStatus | None) -> tuple[str, str, str, str, str]:
    if status is None:
        return "", "", "", "", ""
    is_blocked = status.blocked
    is_new = is_blocked and status.classification is Classification.NEWLY_BLOCKED
    since = last_open = silent = ""
    if status.not_listening:
        silent = f"exchange_path_not_listening{{{labels}}} 1\n"
    if status.state_since is not None:
        since = f"exchange_path_state_since_timestamp_seconds{{{labels}}} {status.state_since:.3f}\n"
    if status.last_open is not None:
        last_open = f"exchange_path_last_open_timestamp_seconds{{{labels}}} {status.last_open:.3f}\n"
    return (
        f"exchange_path_blocked{{{labels}}} {1 if is_blocked else 0}\n",
        f"exchange_path_newly_blocked{{{labels}}} {1 if is_new else 0}\n",
        since,
        last_open,
        silent,
    )


def protocol_health(check: str, outcome: Outcome) -> list[tuple[str, int]]:
    """(check label, 1|0) for exchange_protocol_up: one per sub-check the probe reported (each health
    page of https-health), else one for the check itself."""
    if outcome.subchecks:
        return [(f"{check}:{name}", 1 if ok else 0) for name, ok in outcome.subchecks]
    return [(check, 1 if outcome.state is State.OPEN and outcome.protocol_ok else 0)]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


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


class _PlanLines:
    """One plan's cached lines: per family, each path's current lines ("" when it has none)."""

    def __init__(self, paths: list[NetworkPath]) -> None:
        self.paths = paths
        self.labels = [label_string(p) for p in paths]
        self.lines: list[list[str]] = [[""] * len(paths) for _ in FAMILIES]
        self.state_cache: list[tuple[State, str, str] | None] = [None] * len(paths)
        # per family and block of BLOCK paths: a version bumped whenever one of its lines changes, and
        # the compressed piece made at some version (see render_gzip)
        blocks = (len(paths) + BLOCK - 1) // BLOCK
        self.versions = [[0] * blocks for _ in FAMILIES]
        self.pieces: dict[tuple[int, int], tuple[int, Piece]] = {}
        self.lock = threading.Lock()  # recorded/seeded vs a scrape's snapshot: a path's lines move together

    def set(self, index: int, new: tuple[str, ...]) -> None:
        block = index // BLOCK
        lines, versions = self.lines, self.versions
        with self.lock:
            for number, line in enumerate(new):
                if lines[number][index] != line:
                    lines[number][index] = line
                    versions[number][block] += 1

    def result_lines(self, index: int, result: PathResult) -> tuple[str, ...]:
        outcome, labels = result.outcome, self.labels[index]
        cached = self.state_cache[index]
        if cached is None or cached[0] is not outcome.state:
            up = f"exchange_path_up{{{labels}}} {1 if outcome.state is State.OPEN else 0}\n"
            states = "".join(
                f'exchange_path_state{{{labels},state="{s.value}"}} {1 if s is outcome.state else 0}\n'
                for s in STATES
            )
            cached = (outcome.state, up, states)
            self.state_cache[index] = cached
        rtt = outcome.rtt if outcome.rtt is not None else math.nan
        blocked, newly, since, last_open, silent = _status_lines(labels, result.status)
        path = self.paths[index]
        protocol = cert = ""
        if path.check != "tcp":
            protocol = "".join(
                f'exchange_protocol_up{{{labels},check="{escape_label(check)}"}} {value}\n'
                for check, value in protocol_health(path.check, outcome)
            )
        if outcome.cert_expiry is not None:
            where = f',family="{path.family}"' if path.family else ""
            where += f',endpoint="{escape_label(path.endpoint)}"' if path.endpoint else ""
            cert = (
                f'exchange_tls_cert_expiry_timestamp_seconds{{target="{escape_label(path.target)}",'
                f'port="{path.port}",service="{escape_label(path.service)}"{where}}} '
                f"{outcome.cert_expiry:.0f}\n"
            )
        return (
            cached[1],
            cached[2],
            f"exchange_path_connect_seconds{{{labels}}} {_number(rtt)}\n",
            f"exchange_path_last_probe_timestamp_seconds{{{labels}}} {result.wall:.3f}\n",
            blocked,
            newly,
            since,
            last_open,
            silent,
            protocol,
            cert,
        )

    def seed_lines(self, index: int, status: PathStatus) -> tuple[str, ...]:
        blocked, newly, since, last_open, silent = _status_lines(self.labels[index], status)
        return ("", "", "", "", blocked, newly, since, last_open, silent, "", "")


class PathExposition:
    """The per-path families of /metrics, kept up to date from the results as they are recorded."""

    def __init__(self) -> None:
        self._plan = _PlanLines([])
        self._joined: tuple[PathExposition, ...] = ()

    def join(self, others: Iterable[PathExposition]) -> None:
        """Serve `others`' paths too, after this one's in each family: agents in this process (the demo's
        mesh) scraped through one /metrics. Their series differ by their `source` label."""
        self._joined = tuple(others)

    # ---- ResultListener (the prober's thread) ------------------------------------------------------
    def attach(self, table: ResultTable) -> None:
        plan = _PlanLines(table.paths)
        for index, result in enumerate(table.results()):
            if result is not None:  # re-rendered, so the cached lines carry the new plan's labels
                plan.set(index, plan.result_lines(index, result))
        for index, status in table.seeds.items():
            plan.set(index, plan.seed_lines(index, status))
        self._plan = plan

    def recorded(self, index: int, result: PathResult) -> None:
        plan = self._plan
        plan.set(index, plan.result_lines(index, result))

    def seeded(self, index: int, status: PathStatus) -> None:
        plan = self._plan
        plan.set(index, plan.seed_lines(index, status))

    # ---- scrapes (any thread) ----------------------------------------------------------------------
    def render_gzip(self, head: bytes) -> bytes:
        """`head` + render() as one gzip member, recompressing only the blocks whose lines changed since
        the last scrape (the state-dependent families rarely change; timestamps always do)."""
        parts = [one._family_pieces() for one in (self, *self._joined)]
        pieces = [Piece(head)]
        for number, (name, kind, help_text) in enumerate(FAMILIES):
            family = [piece for part in parts for piece in part[number]]
            if any(piece.size for piece in family):
                pieces.append(Piece(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()))
                pieces.extend(family)
        return assemble(pieces)

    def _family_pieces(self) -> list[list[Piece]]:
        """Each family's compressed blocks of this plan, the changed ones recompressed."""
        plan = self._plan
        changed: list[tuple[int, int, int, list[str]]] = []  # (family, block, version, its lines)
        with plan.lock:  # copies references only: the prober waits a millisecond or two at most
            for number, family_versions in enumerate(plan.versions):
                lines = plan.lines[number]
                for block, version in enumerate(family_versions):
                    cached = plan.pieces.get((number, block))
                    if cached is None or cached[0] != version:
                        changed.append((number, block, version, lines[block * BLOCK : (block + 1) * BLOCK]))
        # zlib releases the GIL while it compresses: the changed blocks are compressed on all cores
        built = _compressors().map(_piece, changed) if len(changed) > 1 else map(_piece, changed)
        for key, value in built:
            plan.pieces[key] = value
        blocks = len(plan.versions[0]) if plan.versions else 0
        return [
            [plan.pieces[(number, block)][1] for block in range(blocks)] for number in range(len(FAMILIES))
        ]

    def render(self) -> str:
        """The per-path families in the text exposition format (paths never probed are left out)."""
        return b"".join(self.render_blocks()).decode("utf-8")

    def render_blocks(self) -> Iterator[bytes]:
        """render(), as a sequence of small byte strings: each a family's header or BLOCK paths' lines of
        it. Each piece is made when it is asked for, so a plain scrape of 100k paths is a stream of
        short steps (a thread serving it lets the probing thread run between them), never one
        300 MB join holding the interpreter."""
        snapshot: list[list[str]] = [[] for _ in FAMILIES]
        for one in (self, *self._joined):
            plan = one._plan
            with plan.lock:  # one consistent moment: a path's lines move together
                for number, lines in enumerate(plan.lines):
                    snapshot[number] += lines
        for (name, kind, help_text), lines in zip(FAMILIES, snapshot, strict=True):
            header = False
            for start in range(0, len(lines), BLOCK):
                body = "".join(lines[start : start + BLOCK])
                if not body:
                    continue
                if not header:
                    header = True
                    yield f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()
                yield body.encode("utf-8")
