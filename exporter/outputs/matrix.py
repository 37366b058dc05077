"""The matrix page: sources x targets (grouped by site), each cell the worst current state of its paths.

Server-rendered HTML; a little vanilla JS refreshes the table and the change log in place and applies
the filters (site, role, state), which also live in the URL so a filtered view can be linked or
screenshotted. Every string from the inventory or the wire is escaped: names come from a directory
that anyone with the right rights can write to.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# Cell verdicts, worst first. Each has an icon and a word, so the page reads without colour.
VERDICTS: tuple[tuple[str, str, str, str], ...] = (
    # key, icon, word, description
    ("new-block", "✖", "NEW BLOCK", "blocked, and it used to work: this pages"),
    ("blocked", "✖", "blocked", "blocked after hysteresis"),
    ("never-open", "⊘", "never open", "blocked since it was first probed"),
    ("failing", "!", "failing", "the last probe failed; being confirmed"),
    ("unreachable-peer", "?", "no answer from agent", "the agent's own API could not be reached"),
    ("error", "⚠", "our error", "dns_error or local_error on the prober: not a network verdict"),
    ("pending", "…", "pending", "not probed yet"),
    (
        "not-listening",
        "○",
        "not listening",
        "the host refused and it never worked: nothing listens (no firewall)",
    ),
    ("open", "✔", "open", "every path open"),
)
_RANK = {key: rank for rank, (key, *_rest) in enumerate(VERDICTS)}
_ICON = {key: icon for key, icon, _w, _d in VERDICTS}
_WORD = {key: word for key, _i, word, _d in VERDICTS}


def path_verdict(row: Mapping[str, Any]) -> str:
    """The cell verdict of one path row (the /api/v1/paths fields)."""
    state, status, classification = row.get("state"), row.get("status"), row.get("classification")
    if row.get("peer_error"):
        return "unreachable-peer"
    if status == "blocked":
        if classification == "not_listening":
            return "not-listening"
        if classification == "newly_blocked":
            return "new-block"
        return "never-open" if classification == "never_open" else "blocked"
    if state is None:
        return "pending"
    if state in ("dns_error", "local_error"):
        return "error"
    if state != "open":
        return "failing"
    return "open"


@dataclass
class Cell:
    verdict: str = "pending"
    paths: list[Mapping[str, Any]] = field(default_factory=list)

    def add(self, row: Mapping[str, Any]) -> None:
        self.paths.append(row)
        verdict = path_verdict(row)
        if _RANK[verdict] < _RANK[self.verdict] or len(self.paths) == 1:
            self.verdict = verdict

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.paths:
            verdict = path_verdict(row)
            out[verdict] = out.get(verdict, 0) + 1
        return out


@dataclass
class Matrix:
    sources: list[tuple[str, str]]  # (source, source_site)
    sites: list[tuple[str, list[tuple[str, str]]]]  # (site, [(target, role)])
    cells: dict[tuple[str, str], Cell]


def build(rows: Iterable[Mapping[str, Any]]) -> Matrix:
    sources: dict[str, str] = {}
    targets: dict[str, tuple[str, str]] = {}
    cells: dict[tuple[str, str], Cell] = {}
    for row in rows:
        source, target = str(row["source"]), str(row["target"])
        sources.setdefault(source, str(row.get("source_site") or ""))
        targets.setdefault(target, (str(row.get("target_site") or ""), str(row.get("target_role") or "")))
        cells.setdefault((source, target), Cell()).add(row)
    by_site: dict[str, list[tuple[str, str]]] = {}
    for target, (site, role) in targets.items():
        by_site.setdefault(site, []).append((target, role))
    sites = [(site, sorted(members)) for site, members in sorted(by_site.items())]
    return Matrix(sorted(sources.items(), key=lambda s: (s[1], s[0])), sites, cells)


def short_name(fqdn: str) -> str:
    """The host label of an FQDN (an IP address stays whole), to keep columns narrow."""
    if fqdn.replace(".", "").isdigit() or ":" in fqdn:
        return fqdn
    return fqdn.split(".", 1)[0]


def summary(matrix: Matrix) -> str:
    """`80 paths: 79 open, 1 never open`, worst first."""
    counts: dict[str, int] = {}
    total = 0
    for cell in matrix.cells.values():
        for verdict, n in cell.counts().items():
            counts[verdict] = counts.get(verdict, 0) + n
            total += n
    parts = [f"{counts[key]} {_WORD[key]}" for key, *_rest in VERDICTS if counts.get(key)]
    return f"{total} paths: " + ", ".join(parts) if total else "no paths"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _where(row: Mapping[str, Any]) -> str:
    """` over IPv6`, ` to 10.2.0.5`: said only where a target has several paths for one port (dual stack,
    a replication network), so a single-stack organisation reads as before."""
    where = " over IPv6" if row.get("family") == "ipv6" else ""
    if row.get("endpoint"):
        where += f" to {row['endpoint']}"
    return where


def _where_located(row: Mapping[str, Any]) -> str:
    """` where: silent after hop 2 (10.1.2.1)`, for a change or a path that has been located."""
    location = row.get("location")
    if not isinstance(location, Mapping) or not location.get("how"):
        return ""
    named = f" ({location['device_name']})" if location.get("device_name") else ""
    return f" <span class=where>where: {_e(location['how'])}{_e(named)}</span>"


def _tooltip(cell: Cell) -> str:
    lines = []
    for row in sorted(cell.paths, key=lambda r: (r.get("proto", ""), int(r.get("port", 0)))):
        state = row.get("state") or "pending"
        line = f"{row.get('port')}/{row.get('proto')} {row.get('service')}{_where(row)}: {state}"
        if row.get("status") == "blocked":
            line += f" ({row.get('classification')}, since {row.get('state_since') or '?'})"
        if row.get("evidence"):
            line += f" - {row['evidence']}"
        location = row.get("location")
        if isinstance(location, Mapping) and location.get("how"):
            line += f" - where: {location['how']}"
        lines.append(line)
    return "\n".join(lines)


def _ports_list(cell: Cell) -> str:
    items = []
    for row in sorted(cell.paths, key=lambda r: (path_verdict(r) == "open", int(r.get("port", 0)))):
        verdict = path_verdict(row)
        evidence = f" <span class=ev>{_e(row['evidence'])}</span>" if row.get("evidence") else ""
        evidence += _where_located(row)
        items.append(
            f"<li class='v-{verdict}'><span class=icon aria-hidden=true>{_ICON[verdict]}</span> "
            f"{_e(row.get('port'))}/{_e(row.get('proto'))} {_e(row.get('service'))}{_e(_where(row))}: "
            f"<b>{_e(row.get('state') or 'pending')}</b>{evidence}</li>"
        )
    return "<ul class=ports>" + "".join(items) + "</ul>"


def render_table(matrix: Matrix) -> str:
    """The table alone: what the page's script swaps in on refresh."""
    if not matrix.cells:
        return "<p class=empty>No paths planned.</p>"
    head_sites = "".join(
        f"<th colspan={len(members)} scope=colgroup data-site='{_e(site)}'>site {_e(site or '-')}</th>"
        for site, members in matrix.sites
    )
    head_targets = "".join(
        f"<th scope=col data-site='{_e(site)}' data-role='{_e(role)}' data-target='{_e(target)}' "
        f"title='{_e(target)}'>{_e(short_name(target))}<br><small>{_e(role)}</small></th>"
        for site, members in matrix.sites
        for target, role in members
    )
    body = []
    for source, source_site in matrix.sources:
        cells = []
        for site, members in matrix.sites:
            for target, role in members:
                cell = matrix.cells.get((source, target))
                attrs = f"data-site='{_e(site)}' data-role='{_e(role)}' data-target='{_e(target)}'"
                if cell is None:
                    cells.append(f"<td class='cell none' {attrs} data-state=none>-</td>")
                    continue
                counts = cell.counts()
                bad = sum(n for v, n in counts.items() if v != "open")
                summary = (
                    f"{_WORD[cell.verdict]}"
                    if cell.verdict in ("open", "pending")
                    else f"{_WORD[cell.verdict]} {bad}/{len(cell.paths)}"
                )
                states = " ".join(sorted(counts))
                cells.append(
                    f"<td class='cell v-{cell.verdict}' {attrs} data-state='{states}' tabindex=0 "
                    f"title='{_e(_tooltip(cell))}'><span class=icon aria-hidden=true>{_ICON[cell.verdict]}"
                    f"</span> <span class=word>{_e(summary)}</span>"
                    f"<div class=detail hidden>{_ports_list(cell)}</div></td>"
                )
        body.append(
            f"<tr data-source='{_e(source)}'><th scope=row title='{_e(source)}'>{_e(short_name(source))}"
            f"<br><small>site "
            f"{_e(source_site or '-')}</small></th>{''.join(cells)}</tr>"
        )
    return (
        "<table id=matrix><thead><tr><th rowspan=2 scope=col>source \\ target</th>"
        f"{head_sites}</tr><tr>{head_targets}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def render_changes(changes: Iterable[Mapping[str, Any]]) -> str:
    items = []
    for change in changes:
        parts = str(change.get("path", "")).split("|")
        what = (
            f"{parts[0]} → {parts[1]} {parts[2]}/{parts[3]}" if len(parts) >= 4 else str(change.get("path"))
        )
        to = change.get("to_status")
        verdict = {
            "newly_blocked": "new-block",
            "never_open": "never-open",
            "not_listening": "not-listening",
        }.get(str(change.get("classification")), "blocked")
        if to == "open":
            verdict = "open"
        items.append(
            f"<li class='v-{verdict}'><time>{_e(change.get('time', ''))}</time> "
            f"<span class=icon aria-hidden=true>{_ICON[verdict]}</span> {_e(what)}: "
            f"{_e(change.get('from_status'))} → <b>{_e(to)}</b> ({_e(change.get('classification'))})"
            + (f" <span class=ev>{_e(change['evidence'])}</span>" if change.get("evidence") else "")
            + _where_located(change)
            + "</li>"
        )
    return "<ol id=changes>" + ("".join(items) or "<li>No changes yet.</li>") + "</ol>"


def render_page(
    matrix: Matrix,
    changes: Iterable[Mapping[str, Any]],
    *,
    title: str,
    subtitle: str,
    refresh_seconds: int = 10,
) -> str:
    sites = sorted({site for site, _m in matrix.sites} | {s for _src, s in matrix.sources})
    roles = sorted({role for _site, members in matrix.sites for _t, role in members})
    legend = "".join(
        f"<li class='v-{key}'><span class=icon aria-hidden=true>{icon}</span> "
        f"<b>{_e(word)}</b>: {_e(desc)}</li>"
        for key, icon, word, desc in VERDICTS
    )
    site_options = "".join(f"<option>{_e(s)}</option>" for s in sites)
    role_options = "".join(f"<option>{_e(r)}</option>" for r in roles)
    state_options = "".join(f"<option value='{k}'>{_e(w)}</option>" for k, _i, w, _d in VERDICTS)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - path matrix</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1><p>{_e(subtitle)} · updated <time id=updated>{now}</time></p></header>
<form id=filters aria-label="filters">
<label>Site <select name=site><option value="">all</option>{site_options}</select></label>
<label>Role <select name=role><option value="">all</option>{role_options}</select></label>
<label>State <select name=state><option value="">all</option>
<option value="problem">any problem</option>{state_options}</select></label>
</form>
<main>
<section id=grid aria-label="matrix"><p id=summary>{_e(summary(matrix))}</p>{render_table(matrix)}</section>
<aside><h2>Changes</h2>{render_changes(changes)}<h2>Legend</h2><ul class=legend>{legend}</ul></aside>
</main>
<script>const REFRESH_MS = {int(refresh_seconds) * 1000};{_JS}</script>
</body></html>
"""


def _asset(name: str) -> str:
    return (resources.files("exporter.outputs") / "static" / name).read_text(encoding="utf-8")


_CSS = _asset("matrix.css")
_JS = _asset("matrix.js")
