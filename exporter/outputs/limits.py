"""Request limits for the HTTP side: bounded request size and a per-client rate limit.

The service only serves GETs; a body, an oversized query or header block, or a client hammering the API
gets a clear 4xx and costs us nothing else. Scrapes of /metrics and health checks have their own, more
generous budget, so a busy dashboard cannot starve Prometheus.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.responses import PlainTextResponse

MAX_QUERY_BYTES = 4096
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 1024
#: requests per second and burst, per client address
API_RATE, API_BURST = 20.0, 60.0
SCRAPE_RATE, SCRAPE_BURST = 10.0, 30.0
MAX_CLIENTS = 4096  # tracked client buckets (oldest forgotten first)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class _Buckets:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float) -> bool:
        tokens, last = self._state.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        self._state[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._state) > MAX_CLIENTS:
            self._state.popitem(last=False)
        return allowed


class RequestLimits:
    """ASGI middleware enforcing the limits above."""

    def __init__(self, app: App, *, api_rate: float = API_RATE, api_burst: float = API_BURST) -> None:
        self.app = app
        self.api = _Buckets(api_rate, api_burst)
        self.scrape = _Buckets(SCRAPE_RATE, SCRAPE_BURST)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._check(scope)
        if problem is not None:
            status, text = problem
            headers = {"Retry-After": "1"} if status == 429 else {}
            await PlainTextResponse(text + "\n", status_code=status, headers=headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        query = scope.get("query_string", b"")
        if len(query) > MAX_QUERY_BYTES:
            return 414, f"query string longer than {MAX_QUERY_BYTES} bytes"
        try:  # a parameter that is not UTF-8 would otherwise be dropped silently, not refused
            unquote_to_bytes(query.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return 400, "query string is not UTF-8"
        headers = scope.get("headers", [])
        if sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            return 431, f"headers larger than {MAX_HEADER_BYTES} bytes"
        for key, value in headers:
            if key == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                return 413, "this service takes no request bodies"
            if key == b"transfer-encoding" and b"chunked" in value.lower():
                return 413, "this service takes no request bodies"
        client = (scope.get("client") or ("?", 0))[0]
        path = scope.get("path", "")
        buckets = self.scrape if path in ("/metrics", "/-/healthy", "/-/ready") else self.api
        if not buckets.take(str(client), time.monotonic()):
            return 429, "too many requests; slow down"
        return None
