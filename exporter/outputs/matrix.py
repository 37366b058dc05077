"""The matrix page: sources x targets (grouped by site), each cell the worst current state of its paths.

Server-rendered HTML; a little vanilla JS refreshes the table and the change log in place and applies
the filters (site, role, state), which also live in the URL so a filtered view can be linked or
screenshotted. Every string from the inventory or the wire is escaped: names come from a directory
that anyone with the right rights can write to.
"""

from __future__ import annotations

import datetime as dt
import html
import time
import urllib.parse
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


def ago(seconds: float) -> str:
    """`12 min ago`, `3 h ago`, `2 days ago`; `just now` under ten seconds; `in the future` (clock skew)."""
    if seconds < -60:
        return "in the future"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return "just now"
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


def _parse_time(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _time(value: object, now: float) -> str:
    """`<time datetime=... title=exact>12 min ago</time>`: relative, the exact UTC time on hover."""
    ts = _parse_time(value)
    if ts is None:
        return "<time>?</time>"
    exact = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"<time datetime='{exact}' title='{exact}'>{_e(ago(now - ts))}</time>"


def _rtt(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


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


def _ports_list(cell: Cell, now: float) -> str:
    items = []
    for row in sorted(cell.paths, key=lambda r: (path_verdict(r) == "open", int(r.get("port", 0)))):
        verdict = path_verdict(row)
        facts = []
        if row.get("state") == "open" and row.get("rtt_seconds") is not None:
            facts.append(f"connect {_e(_rtt(row['rtt_seconds']))}")
        if row.get("status") == "blocked":
            facts.append(_e(str(row.get("classification") or "").replace("_", " ")))
        if row.get("state_since"):
            facts.append(f"since {_time(row['state_since'], now)}")
        said = f" <span class=facts>({', '.join(facts)})</span>" if facts else ""
        evidence = f" <span class=ev>{_e(row['evidence'])}</span>" if row.get("evidence") else ""
        evidence += _where_located(row)
        items.append(
            f"<li class='v-{verdict}'><span class=icon aria-hidden=true>{_ICON[verdict]}</span> "
            f"{_e(row.get('port'))}/{_e(row.get('proto'))} {_e(row.get('service'))}{_e(_where(row))}: "
            f"<b>{_e(row.get('state') or 'pending')}</b>{said}{evidence}</li>"
        )
    return "<ul class=ports>" + "".join(items) + "</ul>"


def cell_link(source: str, target: str, at: float | None = None) -> str:
    """The query string that opens one cell: `?source=...&target=...` (and the moment, when not now)."""
    query = {"source": source, "target": target}
    if at is not None:
        query["at"] = f"{at:.0f}"
    return "?" + urllib.parse.urlencode(query)


def render_table(
    matrix: Matrix, *, now: float | None = None, at: float | None = None, agents_down: Iterable[str] = ()
) -> str:
    """The table alone: what the page's script swaps in on refresh. Each cell is a button (Enter and
    Space open it) with `aria-expanded`, its detail and a link to itself."""
    if not matrix.cells:
        return "<p class=empty>No paths planned.</p>"
    now = time.time() if now is None else now
    down = set(agents_down)
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
    number = 0
    for source, source_site in matrix.sources:
        cells = []
        source_down = False
        for site, members in matrix.sites:
            for target, role in members:
                cell = matrix.cells.get((source, target))
                attrs = f"data-site='{_e(site)}' data-role='{_e(role)}' data-target='{_e(target)}'"
                if cell is None:
                    cells.append(f"<td class='cell none' {attrs} data-state=none>-</td>")
                    continue
                number += 1
                source_down = source_down or any(
                    row.get("agent_up") is False or row.get("agent") in down for row in cell.paths
                )
                counts = cell.counts()
                bad = sum(n for v, n in counts.items() if v != "open")
                summary = (
                    f"{_WORD[cell.verdict]}"
                    if cell.verdict in ("open", "pending")
                    else f"{_WORD[cell.verdict]} {bad}/{len(cell.paths)}"
                )
                states = " ".join(sorted(counts))
                detail = f"d{number}"
                label = f"{short_name(source)} to {short_name(target)}: {summary}"
                cells.append(
                    f"<td class='cell v-{cell.verdict}' {attrs} data-state='{states}' "
                    f"title='{_e(_tooltip(cell))}'><button type=button class=open aria-expanded=false "
                    f"aria-controls={detail} aria-label='{_e(label)}'><span class=icon aria-hidden=true>"
                    f"{_ICON[cell.verdict]}</span> <span class=word>{_e(summary)}</span></button>"
                    f"<div class=detail id={detail} hidden>{_ports_list(cell, now)}"
                    f"<a class=link href='{_e(cell_link(source, target, at))}'>link to this cell</a>"
                    "</div></td>"
                )
        marker = (
            " <span class=down title='Prometheus cannot scrape this agent: its last known state'>"
            "⚠ agent down</span>"
            if source_down
            else ""
        )
        body.append(
            f"<tr data-source='{_e(source)}'><th scope=row title='{_e(source)}'>{_e(short_name(source))}"
            f"{marker}<br><small>site {_e(source_site or '-')}</small></th>{''.join(cells)}</tr>"
        )
    return (
        "<table id=matrix><thead><tr><th rowspan=2 scope=col>source \\ target</th>"
        f"{head_sites}</tr><tr>{head_targets}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def render_changes(changes: Iterable[Mapping[str, Any]], *, now: float | None = None) -> str:
    now = time.time() if now is None else now
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
        link = f" <a href='{_e(cell_link(parts[0], parts[1]))}'>cell</a>" if len(parts) >= 2 else ""
        items.append(
            f"<li class='v-{verdict}'>{_time(change.get('time', ''), now)} "
            f"<span class=icon aria-hidden=true>{_ICON[verdict]}</span> {_e(what)}: "
            f"{_e(change.get('from_status'))} → <b>{_e(to)}</b> ({_e(change.get('classification'))})"
            + (f" <span class=ev>{_e(change['evidence'])}</span>" if change.get("evidence") else "")
            + _where_located(change)
            + link
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
    at: float | None = None,
    history: bool = False,
    notice: str = "",
    agents_down: Iterable[str] = (),
) -> str:
    """The whole page. `at`: the moment shown (None: now, refreshed in place); `history`: whether past
    moments can be shown (the mesh comes from Prometheus), which enables the time control."""
    now = time.time()
    shown = now if at is None else at
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
    stamp = dt.datetime.fromtimestamp(shown, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    moment = (
        f"updated <time id=updated datetime='{stamp}'>{stamp}</time>"
        if at is None
        else f"<strong class=past>as it was at <time datetime='{stamp}'>{stamp}</time> "
        f"({_e(ago(now - at))})</strong>"
    )
    timebar = ""
    if history:
        picked = dt.datetime.fromtimestamp(shown, dt.UTC).strftime("%Y-%m-%dT%H:%M")
        timebar = (
            "<form id=when aria-label='time'><span>Show</span> "
            f"<button type=button data-ago=0 aria-pressed={'true' if at is None else 'false'}>now</button> "
            "<button type=button data-ago=3600>1 h ago</button> "
            "<button type=button data-ago=86400>24 h ago</button> "
            f"<label>or at (UTC) <input type=datetime-local name=at value='{picked}'></label> "
            "<button type=submit>show</button></form>"
        )
    banner = f"<p class=notice role=alert>{_e(notice)}</p>" if notice else ""
    down = list(agents_down)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - path matrix</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1><p>{_e(subtitle)} · {moment}</p>{banner}</header>
{timebar}<form id=filters aria-label="filters">
<label>Site <select name=site><option value="">all</option>{site_options}</select></label>
<label>Role <select name=role><option value="">all</option>{role_options}</select></label>
<label>State <select name=state><option value="">all</option>
<option value="problem">any problem</option>{state_options}</select></label>
</form>
<main>
<section id=grid aria-label="matrix"><p id=summary>{_e(summary(matrix))}</p>{
        render_table(matrix, now=shown, at=at, agents_down=down)
    }</section>
<aside><h2>Changes</h2>{render_changes(changes, now=shown)}<h2>Legend</h2><ul class=legend>{
        legend
    }</ul></aside>
</main>
<script>const REFRESH_MS = {0 if at is not None else int(refresh_seconds) * 1000};{_JS}</script>
</body></html>
"""


def _asset(name: str) -> str:
    return (resources.files("exporter.outputs") / "static" / name).read_text(encoding="utf-8")


_CSS = _asset("matrix.css")
_JS = _asset("matrix.js")
