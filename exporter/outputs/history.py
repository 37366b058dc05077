"""The mesh and its history from Prometheus: every agent's paths, now or at any past moment, in one query.

Prometheus (or Thanos, Mimir, Cortex, VictoriaMetrics: the same query API) already scrapes every agent;
it is the engine the mesh scales on. One view is one instant query (`/api/v1/query`, `time=` for `?at=`)
whose legs are told apart by an `ef_what` label: each path's state, blocked / newly blocked / not
listening, since, connect time, last probe and location, which paths were blocked within the change
window, and each agent's `up`. Rows are rebuilt in the /api/v1/paths shape, so the matrix reads them
like its own.

Each leg reads `last_over_time(...[lookback])`: a restarted or unreachable agent's row keeps its last
known state (marked `agent_up: false`) instead of vanishing at its first failed scrape; a path removed
from an agent's plan lingers for the lookback. The change log is each path's latest change to or from
blocked within the window (from `exchange_path_state_since_timestamp_seconds`), not every flap.

Secrets (the bearer token, the basic-auth password) are read from files at each query, as Prometheus
itself does, and appear in no error, log or page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import pathlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from exporter.outputs.api import iso
from exporter.outputs.exposition import LABELS, OPTIONAL_LABELS

MAX_RESPONSE_BYTES = 128 * 1024 * 1024
CACHE_SECONDS = 5.0
PATH_LABELS = (*LABELS, *OPTIONAL_LABELS)
#: kinds whose paths Microsoft requires open (the rest are client endpoints)
REQUIRED_KINDS = frozenset({"exchange-exchange", "exchange-dc"})
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_MATCHER = re.compile(r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*$')


class QueryError(Exception):
    """Prometheus could not answer (unreachable, error status, bad answer): said as such, never as a path
    state."""


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to ask it; the secrets are file paths, read at each query."""

    url: str
    selector: str = ""  # extra matchers for every series, e.g. job="exchange-firewall-exporter"
    bearer_token_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    verify: str | bool = True
    timeout: float = 10.0
    lookback: str = "10m"
    changes_window: str = "24h"


def check_settings(settings: PrometheusSettings) -> str | None:
    """What is wrong with the settings (for the flag checks), or None."""
    url = httpx.URL(settings.url)
    if url.scheme not in ("http", "https") or not url.host:
        return f"--prometheus.url {safe_url(settings.url)!r} is not an http(s) URL"
    if url.userinfo:
        return (
            "--prometheus.url must not carry user:password: use --prometheus.username and "
            "--prometheus.password-file"
        )
    if settings.selector and not all(_MATCHER.match(part) for part in _split_matchers(settings.selector)):
        return f'--prometheus.selector {settings.selector!r} is not a list of label matchers like job="x"'
    for flag, value in (
        ("--prometheus.lookback", settings.lookback),
        ("--prometheus.changes-window", settings.changes_window),
    ):
        if not _DURATION.match(value):
            return f"{flag} {value!r} is not a Prometheus duration like 10m"
    return None


def _split_matchers(selector: str) -> list[str]:
    """`a="x,y", b=~"z"` -> its matchers (commas inside quotes do not split)."""
    parts, current, quoted, escaped = [], "", False, False
    for char in selector:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current)
    return parts


def safe_url(url: str) -> str:
    """The URL without any user:password, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def parse_at(text: str) -> float:
    """`?at=` as Prometheus's own `time`: a Unix timestamp (seconds, may be fractional) or RFC 3339."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"at={text[:40]!r} is neither a Unix timestamp nor an RFC 3339 time (2026-12-05T02:10:00Z)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value) or value < 0 or value > 1e11:
        raise ValueError(f"at={text[:40]!r} is out of range")
    return value


def mesh_query(settings: PrometheusSettings) -> str:
    """The one instant query of a view."""
    sel = "{" + settings.selector + "}" if settings.selector else ""
    lookback, window = settings.lookback, settings.changes_window

    def last(metric: str) -> str:
        return f"last_over_time({metric}{sel}[{lookback}])"

    def leg(what: str, expr: str) -> str:
        return f'label_replace({expr}, "ef_what", "{what}", "", "")'

    legs = [
        leg("state", f"{last('exchange_path_state')} == 1"),
        leg("blocked", f"{last('exchange_path_blocked')} == 1"),
        leg("newly", f"{last('exchange_path_newly_blocked')} == 1"),
        leg("silent", f"{last('exchange_path_not_listening')} == 1"),
        leg("since", last("exchange_path_state_since_timestamp_seconds")),
        leg("rtt", last("exchange_path_connect_seconds")),
        leg("probed", last("exchange_path_last_probe_timestamp_seconds")),
        leg("location", last("exchange_path_block_location_info")),
        leg("was_blocked", f"max_over_time(exchange_path_blocked{sel}[{window}]) == 1"),
        leg(
            "up",
            f"up{sel} and on (instance, job) "
            f"count by (instance, job) (last_over_time(exchange_build_info{sel}[{lookback}]))",
        ),
    ]
    return "\n or ".join(legs)


@dataclass
class View:
    """One view of the mesh: rows in the /api/v1/paths shape, the change log, agents not answering."""

    rows: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    agents_down: dict[str, str]  # agent (instance) -> why its rows are the last known
    at: float | None  # None: now
    query_seconds: float = 0.0


def _blank_row(labels: Mapping[str, str]) -> dict[str, Any]:
    port = labels.get("port", "0")
    kind = labels.get("kind", "")
    return {
        "source": labels.get("source", ""),
        "source_site": labels.get("source_site", ""),
        "target": labels.get("target", ""),
        "target_site": labels.get("target_site", ""),
        "target_role": labels.get("target_role", ""),
        "port": int(port) if port.isdigit() else 0,
        "proto": labels.get("proto", ""),
        "service": labels.get("service", ""),
        "kind": kind,
        "check": labels.get("service", ""),
        "family": labels.get("family", ""),
        "address": None,
        "endpoint": labels.get("endpoint", ""),
        "required": kind in REQUIRED_KINDS,
        "state": None,
        "evidence": "",
        "rtt_seconds": None,
        "attempts": None,
        "last_probe": None,
        "details": {},
        "status": None,
        "classification": None,
        "blocked": None,
        "newly_blocked": None,
        "not_listening": None,
        "state_since": None,
        "first_probe": None,
        "first_open": None,
        "last_open": None,
        "consecutive_non_open": None,
        "location": None,
        "agent": labels.get("instance", ""),
        "agent_up": True,
        "from_prometheus": True,
    }


def _location_how(labels: Mapping[str, str]) -> str:
    verdict, hop, device = labels.get("verdict", ""), labels.get("hop", ""), labels.get("device", "")
    at = f"hop {hop}" + (f" ({device})" if device else "") if hop else (device or "")
    if verdict == "dropped":
        return f"silent after {at}: dropped there or beyond" if at else "dropped"
    if verdict == "rejected":
        return f"rejected at {at}" if at else "rejected"
    if verdict == "reset-by-device":
        return f"reset by a device at {at}" if at else "reset by a device"
    if verdict == "reset-host-or-last-hop":
        return f"reset at {at}: by the host, or by a device at the last hop"
    return verdict or "unknown"


def build_view(result: list[dict[str, Any]], at: float | None, window_seconds: float) -> View:
    """Rows and changes from the query's series."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    values: dict[tuple[str, ...], dict[str, float]] = {}
    up: dict[str, float] = {}
    for series in result:
        labels = series.get("metric")
        value = series.get("value")
        if not isinstance(labels, dict) or not isinstance(value, list) or len(value) != 2:
            continue
        try:
            number = float(value[1])
        except (TypeError, ValueError):
            continue
        what = labels.get("ef_what", "")
        if what == "up":
            instance = str(labels.get("instance", ""))
            up[instance] = max(up.get(instance, 0.0), number)
            continue
        if not labels.get("source") or not labels.get("target"):
            continue
        key = tuple(str(labels.get(name, "")) for name in PATH_LABELS)
        row = rows.get(key)
        if row is None:
            row = rows[key] = _blank_row(labels)
        seen = values.setdefault(key, {})
        if what == "state":
            row["state"] = labels.get("state")
        elif what == "location":
            row["location"] = {
                "how": _location_how(labels),
                "hop": int(labels["hop"]) if str(labels.get("hop", "")).isdigit() else None,
                "device": labels.get("device") or None,
                "device_name": labels.get("device_name") or None,
                "verdict": labels.get("verdict", ""),
                "hops": [],
                "located_at": None,
            }
        else:
            seen[what] = number
    now = time.time() if at is None else at
    changes: list[dict[str, Any]] = []
    for key, row in rows.items():
        seen = values.get(key, {})
        since = seen.get("since")
        row["state_since"] = iso(since)
        row["rtt_seconds"] = seen.get("rtt") if row["state"] == "open" else None
        row["last_probe"] = iso(seen.get("probed"))
        row["not_listening"] = "silent" in seen
        row["blocked"] = "blocked" in seen and not row["not_listening"]
        row["newly_blocked"] = "newly" in seen
        if row["not_listening"]:
            row["status"], row["classification"] = "blocked", "not_listening"
        elif row["blocked"]:
            row["status"] = "blocked"
            row["classification"] = "newly_blocked" if row["newly_blocked"] else "never_open"
        else:
            row["status"] = "pending" if row["state"] is None else "open"
            row["classification"] = "recovered" if "was_blocked" in seen else "ok"
            row["location"] = None
        agent = row["agent"]
        if agent in up and up[agent] < 1:
            row["agent_up"] = False
        if since is None or now - since > window_seconds or since > now + 60:
            continue
        if row["status"] == "blocked" and not row["not_listening"]:
            from_status = "open" if row["newly_blocked"] else "pending"
        elif row["classification"] == "recovered" and row["status"] == "open":
            from_status = "blocked"
        else:
            continue
        changes.append(
            {
                "time": iso(since),
                "timestamp": since,
                "path": "|".join(
                    (row["source"], row["target"], str(row["port"]), row["proto"], row["check"])
                ),
                "from_status": from_status,
                "to_status": row["status"],
                "classification": row["classification"],
                "evidence": f"{row['state']}" if row["state"] else "",
                "location": row["location"],
                "agent": agent,
            }
        )
    changes.sort(key=lambda change: change["timestamp"], reverse=True)
    down = {
        agent: "Prometheus cannot scrape it (up == 0): its rows are the last known"
        for agent, value in up.items()
        if value < 1
    }
    return View(list(rows.values()), changes, down, at)


def duration_seconds(text: str) -> float:
    """A Prometheus duration checked by check_settings (`10m`) in seconds."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return int(text[: found.start(1)]) * _UNITS[found.group(1)]


class PrometheusMesh:
    """Views of the mesh from Prometheus; one instant query each, cached for a few seconds."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.query = mesh_query(settings)
        self._window = duration_seconds(settings.changes_window)
        self._cache: dict[float | None, tuple[float, View]] = {}
        self._lock = asyncio.Lock()

    async def view(self, at: float | None = None) -> View:
        key = None if at is None else round(at, 3)
        async with self._lock:
            cached = self._cache.get(key)
            if cached is not None and time.monotonic() - cached[0] <= CACHE_SECONDS:
                return cached[1]
            started = time.monotonic()
            result = await self._instant(at)
            view = build_view(result, at, self._window)
            view.query_seconds = time.monotonic() - started
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), view)
            return view

    def _auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        settings = self.settings
        headers: dict[str, str] = {}
        auth = None
        try:
            if settings.bearer_token_file:
                token = pathlib.Path(settings.bearer_token_file).read_text().strip()
                headers["Authorization"] = f"Bearer {token}"
            if settings.username is not None:
                password = ""
                if settings.password_file:
                    password = pathlib.Path(settings.password_file).read_text().rstrip("\r\n")
                auth = (settings.username, password)
        except OSError as exc:
            raise QueryError(f"cannot read a Prometheus credential file: {exc.strerror}") from None
        return headers, auth

    async def _instant(self, at: float | None) -> list[dict[str, Any]]:
        settings = self.settings
        headers, auth = self._auth()
        params = {"query": self.query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        where = safe_url(settings.url)
        try:
            async with httpx.AsyncClient(
                timeout=settings.timeout, verify=settings.verify, auth=auth, headers=headers
            ) as client:
                body = await asyncio.wait_for(self._post(client, params), settings.timeout * 2)
        except TimeoutError:
            raise QueryError(
                f"Prometheus at {where} did not answer within {settings.timeout * 2:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise QueryError(f"Prometheus at {where}: {type(exc).__name__}") from None
        try:
            data = httpx.Response(200, content=body).json()
        except ValueError:
            raise QueryError(f"Prometheus at {where} answered something that is not JSON") from None
        if not isinstance(data, dict) or data.get("status") != "success":
            error = str(data.get("error", "")) if isinstance(data, dict) else ""
            raise QueryError(f"Prometheus at {where} refused the query: {error[:300]}")
        payload = data.get("data")
        if not isinstance(payload, dict) or payload.get("resultType") != "vector":
            raise QueryError(f"Prometheus at {where} answered no instant vector")
        result = payload.get("result")
        return result if isinstance(result, list) else []

    async def _post(self, client: httpx.AsyncClient, params: dict[str, str]) -> bytes:
        url = self.settings.url.rstrip("/") + "/api/v1/query"
        async with client.stream("POST", url, data=params) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise QueryError(
                        f"Prometheus's answer is larger than {MAX_RESPONSE_BYTES // 2**20} MiB: narrow "
                        "--prometheus.selector"
                    )
            if response.status_code not in (200, 400, 422):
                raise QueryError(
                    f"Prometheus at {safe_url(self.settings.url)} answered HTTP {response.status_code}"
                )
        return bytes(body)
