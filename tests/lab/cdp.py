"""Real headless Chromium driven over the DevTools protocol: real key presses, the live DOM, computed styles.

async with Page.open(url, tmp_path) as page:
    await page.key("Tab"); await page.key("Enter")
    assert await page.evaluate("document.activeElement.getAttribute('aria-expanded')") == "true"
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

from tests.lab.browser import headless

# key -> (code, windows virtual key code, text typed)
KEYS = {"Enter": ("Enter", 13, "\r"), " ": ("Space", 32, " "), "Tab": ("Tab", 9, "")}


class Page:
    def __init__(self, ws: Any, session: str) -> None:
        self.ws = ws
        self.session = session
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, tmp_path: Path) -> AsyncIterator[Page]:
        proc = subprocess.Popen(
            [
                *headless(tmp_path / "chromium-cdp", 900),
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "about:blank",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            endpoint = await asyncio.wait_for(asyncio.to_thread(_devtools_url, proc), 30)
            async with websockets.connect(endpoint, max_size=64 * 2**20) as ws:
                browser = Page(ws, "")
                target = await browser.send("Target.createTarget", {"url": "about:blank"})
                attached = await browser.send(
                    "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
                )
                page = Page(ws, attached["sessionId"])
                await page.send("Page.enable")
                await page.goto(url)
                yield page
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        await self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if reply.get("id") == ident and reply.get("sessionId", "") == self.session:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && !!document.getElementById('matrix')")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.evaluate(f"!!({expression})"):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not true within {timeout:g}s: {expression}")
            await asyncio.sleep(0.1)

    async def key(self, key: str) -> None:
        """One real key press (down, up) as the keyboard sends it."""
        code, vk, text = KEYS[key]
        base = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
        await self.send(
            "Input.dispatchKeyEvent",
            {"type": "keyDown", **base, "text": text} if text else {"type": "rawKeyDown", **base},
        )
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})


def _devtools_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            return found.group(1)
    raise RuntimeError("chromium exited before it listened for DevTools")


#: WCAG 2.x contrast of every visible text against its effective background (the first opaque
#: ancestor's), the check axe-core's color-contrast rule makes; returns the offenders
CONTRAST_AUDIT = r"""
(() => {
  const rgb = s => {
    const m = s.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const lum = c => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor); if (c && c.a > 0.99) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const faded = el => {
    for (let e = el; e; e = e.parentElement) if (Number(getComputedStyle(e).opacity) < 1) return true;
    return false;
  };
  const out = []; let checked = 0;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.textContent.trim()) continue;
    const el = n.parentElement, st = getComputedStyle(el);
    if (!el.getClientRects().length || st.visibility !== 'visible') continue;  // not rendered
    const text = n.textContent.trim().slice(0, 40);
    if (faded(el)) { out.push({text, why: 'opacity below 1'}); continue; }
    const fg = rgb(st.color), bg = background(el);
    const l1 = lum(fg), l2 = lum(bg), ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    checked++;
    const size = parseFloat(st.fontSize), bold = Number(st.fontWeight) >= 700;
    const large = size >= 24 || (size >= 18.66 && bold);
    if (ratio < (large ? 3 : 4.5)) out.push({text, ratio: Math.round(ratio * 100) / 100, color: st.color,
      background: `rgb(${bg.r}, ${bg.g}, ${bg.b})`});
  }
  return {checked, offenders: out};
})()
"""
