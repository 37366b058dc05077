"""The matrix page in real headless Chromium: the cells for a known state, a filter, a screenshot."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from exporter.outputs import matrix
from tests.lab.browser import browse, tags_of
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
        rows = svc.get("/api/v1/paths", params={"target": "exse.demo.example"}).json()
        return any(r["port"] == 2525 and r["status"] == "blocked" for r in rows)

    wait_until(blocked, timeout=30)
    yield svc
    svc.proc.terminate()
    svc.proc.wait(10)


def test_matrix_renders_the_known_state_in_chromium(demo: Service, tmp_path: Path) -> None:
    dom = browse(demo.base + "/matrix", tmp_path)
    cells = {
        attrs["data-target"]: (attrs["class"], text) for tag, attrs, text in elements(dom) if tag == "td"
    }
    # SE's 2525 is closed on purpose: its host refuses a port that never worked, nothing listens there
    assert cells["exse.demo.example"][0] == "cell v-not-listening"
    assert cells["exse.demo.example"][1].startswith("○ not listening 1/15")  # icon and words, not colour
    assert "2525/tcp smtp-transport: refused ECONNREFUSED" in cells["exse.demo.example"][1]
    for target in ("dc1.demo.example", "dc2.demo.example", "ex16a.demo.example", "ex19a.demo.example"):
        assert cells[target][0] == "cell v-open", target
    assert "84 paths: 1 not listening, 83 open" in dom
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
