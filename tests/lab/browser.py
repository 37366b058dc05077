"""Real headless Chromium: the DOM a page builds once its scripts ran, or a screenshot; and its tags.

dom = browse(svc.base + "/matrix", tmp_path)
assert not [tag for tag, _attrs in tags_of(dom) if tag == "img"]
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is missing: `make test` installs Debian's chromium package")


def headless(profile: Path, height: int) -> list[str]:
    """A fresh headless Chromium with its own profile, talking to nothing but the page it is given."""
    return [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
        f"--window-size=1400,{height}",
    ]


def browse(url: str, tmp_path: Path, *, screenshot: Path | None = None, height: int = 700) -> str:
    """The DOM after the page's scripts ran (or a screenshot), from a fresh headless Chromium."""
    args = [*headless(tmp_path / "chromium", height), "--virtual-time-budget=3000"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Tags(HTMLParser):
    """Every start tag in a document, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(dom: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(dom)
    return parser.tags
