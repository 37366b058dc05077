"""The matrix page in real headless Chromium: the cells for a known state, a filter, a screenshot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from exporter.outputs import matrix
from tests.lab.browser import browse, tags_of
from tests.lab.cdp import CONTRAST_AUDIT, Page
from tests.lab.metrics import promtool_check_metrics
from tests.lab.organisations import loopback_org
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


class Elements(HTMLParser):
    """Every element with a data-target attribute: (tag, attributes, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "data-target" in attributes and tag in ("td", "th"):
            text: list[str] = []
            self.found.append((tag, attributes, text))
            self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for text in self._open:
            text.append(data)


def elements(dom: str) -> list[tuple[str, dict[str, str | None], str]]:
    parser = Elements()
    parser.feed(dom)
    return [(tag, attrs, " ".join("".join(text).split())) for tag, attrs, text in parser.found]


@pytest.fixture(scope="module")
def demo() -> Iterator[Service]:
    svc = start_service(["demo", "--interval", "1", "--timeout", "0.3", "--demo-break-after", "600"])

    def blocked() -> bool:
        """Every agent of the demo's mesh has probed every path, and each has found SE's 2525 refused
        often enough to call it not listening."""
        rows = svc.get("/api/v1/mesh").json()
        silent = [r for r in rows if r["port"] == 2525 and r["classification"] == "not_listening"]
        return all(r["state"] is not None for r in rows) and len(silent) == 4

    wait_until(blocked, timeout=30)
    yield svc
    svc.proc.terminate()
    svc.proc.wait(10)


def test_matrix_renders_the_known_state_in_chromium(demo: Service, tmp_path: Path) -> None:
    dom = browse(demo.base + "/matrix", tmp_path)
    observer_row = dom.split('<tr data-source="monitor.demo.example">', 1)[1].split("</tr>", 1)[0]
    cells = {
        attrs["data-target"]: (attrs["class"], text)
        for tag, attrs, text in elements(observer_row)
        if tag == "td"
    }
    # SE's 2525 is closed on purpose: its host refuses a port that never worked, nothing listens there
    assert cells["exse.demo.example"][0] == "cell v-not-listening"
    assert cells["exse.demo.example"][1].startswith("○ not listening 1/15")  # icon and words, not colour
    assert "2525/tcp smtp-transport: refused (not listening, since " in cells["exse.demo.example"][1]
    assert "ECONNREFUSED" in cells["exse.demo.example"][1]
    assert re.search(
        r"88/tcp kerberos: open \(connect [0-9.]+ ms, since (just now|[^)]*ago)\)",
        cells["dc1.demo.example"][1],
    )
    for target in ("dc1.demo.example", "dc2.demo.example", "ex16a.demo.example", "ex19a.demo.example"):
        assert cells[target][0] == "cell v-open", target
    assert "354 paths: 4 not listening, 350 open" in dom  # five agents: the observer and four servers
    assert "exse.demo.example 2525/tcp: pending → <b>blocked</b> (not_listening)" in dom  # the change log


def test_state_filter_hides_the_targets_without_that_state(demo: Service, tmp_path: Path) -> None:
    dom = browse(demo.base + "/matrix?state=not-listening", tmp_path)
    headers = {attrs["data-target"]: "hidden" in attrs for tag, attrs, _ in elements(dom) if tag == "th"}
    assert headers.pop("exse.demo.example") is False
    assert headers and all(headers.values()), headers  # every other column hidden
    site = browse(demo.base + "/matrix?site=Site-A", tmp_path)
    visible = {
        attrs["data-target"] for tag, attrs, _ in elements(site) if tag == "th" and "hidden" not in attrs
    }
    assert visible == {"dc1.demo.example", "ex16a.demo.example", "ex19a.demo.example"}


OBSERVER, SE = "monitor.demo.example", "exse.demo.example"
CELL = f"[...document.querySelectorAll('#matrix tbody tr')].find(r => r.dataset.source === '{OBSERVER}')" + (
    f".querySelector('td.cell[data-target=\"{SE}\"]')"
)


async def opened(page: Page) -> tuple[str, bool]:
    """The cell's button's aria-expanded, and whether its detail is hidden."""
    expanded = await page.evaluate(f"{CELL}.querySelector('button.open').getAttribute('aria-expanded')")
    return expanded, await page.evaluate(f"{CELL}.querySelector('.detail').hidden")


async def test_keyboard_opens_a_cell_and_focus_survives_a_refresh(demo: Service, tmp_path: Path) -> None:
    async with Page.open(demo.base + "/matrix", tmp_path) as page:
        # Tab from the top of the page reaches the cells' buttons (after the filters)
        for _ in range(12):
            await page.key("Tab")
            if await page.evaluate("document.activeElement.matches('td.cell button.open')"):
                break
        assert await page.evaluate("document.activeElement.matches('td.cell button.open')")
        await page.evaluate(f"{CELL}.querySelector('button.open').focus()")
        assert await page.evaluate(f"{CELL}.querySelector('.detail').hidden") is True
        await page.key("Enter")
        assert await opened(page) == ("true", False)
        assert "2525/tcp smtp-transport" in await page.evaluate(f"{CELL}.querySelector('.detail').innerText")
        # the open cell is in the URL: a link to it
        assert await page.evaluate("location.search") == f"?source={OBSERVER}&target={SE}"
        # a refresh replaces the table: the cell stays open and keeps the focus
        await page.evaluate("refresh()")
        assert await page.evaluate("document.activeElement.closest('td').dataset.target") == SE
        assert await page.evaluate(f"{CELL}.querySelector('.detail').hidden") is False
        await page.key(" ")
        assert await opened(page) == ("false", True)


async def test_a_link_opens_its_cell(demo: Service, tmp_path: Path) -> None:
    link = matrix.cell_link(OBSERVER, SE)
    async with Page.open(demo.base + "/matrix" + link, tmp_path) as page:
        assert await page.evaluate(f"{CELL}.querySelector('.detail').hidden") is False
        assert await page.evaluate(f"{CELL}.classList.contains('linked')")
        assert await page.evaluate("document.activeElement.closest('td').dataset.target") == SE
        # the detail says since when, relative, with the exact time on hover, and links to itself
        detail = await page.evaluate(f"{CELL}.querySelector('.detail').innerHTML")
        assert re.search(r"since <time datetime=\"[0-9T:-]+Z\" title=\"[0-9T:-]+Z\">", detail), detail
        assert f'href="?source={OBSERVER}&amp;target={SE}"' in detail


async def test_every_state_colour_meets_wcag_aa_contrast(demo: Service, tmp_path: Path) -> None:
    async with Page.open(demo.base + "/matrix", tmp_path) as page:
        # open every cell, so their details (on their state colours) are audited too
        await page.evaluate("document.querySelectorAll('td.cell button.open').forEach(b => b.click())")
        audit = await page.evaluate(CONTRAST_AUDIT)
        assert audit["checked"] > 100
        assert audit["offenders"] == []
        # every state's colour is on the page (the legend uses each), so every one was audited
        legend = await page.evaluate(
            "[...document.querySelectorAll('ul.legend li')].map(li => [li.className, "
            "getComputedStyle(li).backgroundColor])"
        )
        assert {cls for cls, _bg in legend} == {f"v-{key}" for key, *_rest in matrix.VERDICTS}
        assert len({bg for _cls, bg in legend}) >= 7  # distinct colours, not one grey


def row_in(verdict: str, target: str, port: int) -> dict[str, object]:
    """A /api/v1/paths row whose cell verdict is `verdict`."""
    row: dict[str, object] = {
        "source": "ex1.x",
        "source_site": "A",
        "target": target,
        "target_site": "B",
        "target_role": "mailbox",
        "port": port,
        "proto": "tcp",
        "service": "svc",
        "state": "open",
        "status": "open",
        "classification": "ok",
        "evidence": "evidence text",
        "rtt_seconds": 0.001,
        "state_since": "2026-12-05T01:00:00+00:00",
    }
    blocked = {"status": "blocked", "state": "filtered"}
    changes: dict[str, dict[str, object]] = {
        "new-block": {
            **blocked,
            "classification": "newly_blocked",
            "location": {"how": "silent after hop 2"},
        },
        "blocked": {**blocked, "classification": "recovered"},
        "never-open": {**blocked, "classification": "never_open"},
        "failing": {"state": "filtered"},
        "unreachable-peer": {"state": None, "peer_error": "no answer"},
        "error": {"state": "local_error"},
        "pending": {"state": None, "status": None},
        "not-listening": {"status": "blocked", "state": "refused", "classification": "not_listening"},
        "open": {},
    }
    row.update(changes[verdict])
    assert matrix.path_verdict(row) == verdict
    return row


async def test_every_state_colour_in_every_combination_meets_wcag_aa(tmp_path: Path) -> None:
    """Each verdict as a cell holding a path of every verdict it can hold, every cell open: the text of
    each state on the background of each cell it can appear in is audited."""
    keys = [key for key, *_rest in matrix.VERDICTS]
    rows = [row_in(outer, f"t-{outer}.x", 1) for outer in keys]
    # a cell shows its worst path: it holds paths of its own verdict and of every better one
    rows += [
        row_in(inner, f"t-{outer}.x", 2 + i)
        for o, outer in enumerate(keys)
        for i, inner in enumerate(keys)
        if i >= o
    ]
    grid = matrix.build(rows)
    assert {cell.verdict for cell in grid.cells.values()} == set(keys)
    changes = [
        {"time": "2026-12-05T01:00:00+00:00", "path": "a|b|1|tcp|c", "to_status": to, "classification": c}
        for to, c in (("blocked", "newly_blocked"), ("blocked", "never_open"), ("open", "recovered"))
    ]
    page = tmp_path / "matrix.html"
    page.write_text(matrix.render_page(grid, changes, title="t", subtitle="s", refresh_seconds=0))
    async with Page.open(page.as_uri(), tmp_path) as browser:
        await browser.evaluate("document.querySelectorAll('td.cell button.open').forEach(b => b.click())")
        audit = await browser.evaluate(CONTRAST_AUDIT)
        assert audit["checked"] > len(keys) * (len(keys) + 1) // 2
        assert audit["offenders"] == []


def test_relative_times() -> None:
    assert matrix.ago(3) == "just now" and matrix.ago(42) == "42 s ago"
    assert matrix.ago(12 * 60) == "12 min ago" and matrix.ago(5 * 3600) == "5 h ago"
    assert matrix.ago(3 * 86400) == "3 days ago" and matrix.ago(-3600) == "in the future"


def test_matrix_screenshot_is_saved_as_an_artifact(demo: Service, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "matrix.png"
    shot.unlink(missing_ok=True)
    browse(demo.base + "/matrix", tmp_path, screenshot=shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_hostile_names_are_escaped_in_the_page() -> None:
    evil = "<img src=x onerror=alert(1)>"
    grid = matrix.build(
        [
            {
                "source": evil,
                "source_site": evil,
                "target": evil + ".t",
                "target_site": "s'\"",
                "target_role": evil,
                "port": 1,
                "proto": "tcp",
                "service": "x",
                "state": "refused",
                "evidence": evil,
                "status": "blocked",
                "classification": "newly_blocked",
            },
        ]
    )
    page = matrix.render_page(
        grid, [{"path": f"{evil}|b|1|tcp|tcp", "evidence": evil}], title=evil, subtitle=evil
    )
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_hostile_names_from_the_directory_render_inert_in_chromium_and_metrics(tmp_path: Path) -> None:
    """Site and organisation names are free text in AD and in the inventory: markup in them must stay text
    in the page the browser builds, and must not break the exposition format."""
    evil = "<img src=x onerror=alert(1)>"
    org = loopback_org("127.0.49.", servers=1)
    org["organisation"] = "<script>alert(2)</script>"
    org["servers"][0]["site"] = evil
    org["domain_controllers"][0]["site"] = 'q"uote\\back\nslash'
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(org))
    svc = start_service(serve_args(file, source="o", interval=2, timeout=0.3, state_file=""))
    try:
        dom = browse(svc.base + "/matrix", tmp_path)
        tags = tags_of(dom)
        assert not [t for t, _a in tags if t in ("img", "svg", "iframe")]
        assert [t for t, _a in tags if t == "script"] == ["script"]  # only the page's own
        assert not any(k.startswith("on") for _t, attrs in tags for k in attrs)
        assert "&lt;img src=x onerror=alert(1)&gt;" in dom
        metrics_text = svc.get("/metrics").text
        promtool_check_metrics(metrics_text)
        assert 'target_site="<img src=x onerror=alert(1)>"' in metrics_text
        # quotes and backslashes escaped; the newline from the directory replaced before it got here
        assert 'target_site="q\\"uote\\\\back\ufffdslash"' in metrics_text
    finally:
        svc.proc.terminate()
        svc.proc.wait(10)
