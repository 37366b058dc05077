"""The HTTP service: /metrics, /-/healthy, /-/ready, the landing page and the JSON API."""

from __future__ import annotations

import datetime as dt
import html
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from exporter import __version__
from exporter.inventory.refresh import InventoryRefresher
from exporter.outputs import matrix, metrics
from exporter.outputs.api import ChangeView, PathView, VerdictView, change_view, path_view, verdict_view
from exporter.prober import Prober
from exporter.probes.outcome import State

MAX_PATHS_PAGE = 100_000
MAX_CHANGES_PAGE = 10_000


def create_app(prober: Prober, refresher: InventoryRefresher | None = None) -> FastAPI:
    app = FastAPI(
        title="exchange-firewall-exporter",
        version=__version__,
        description="Proves that every network path an Exchange organisation needs is open.",
    )
    registry = metrics.build_registry(prober, refresher)
    app.state.prober = prober

    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        # rendering is CPU-bound on large plans: a worker thread, never the probing loop
        body = await run_in_threadpool(metrics.render, prober, registry)
        body, headers = await run_in_threadpool(
            metrics.maybe_gzip, body, request.headers.get("accept-encoding", "")
        )
        return Response(body, media_type=metrics.CONTENT_TYPE, headers=headers)

    @app.get("/-/healthy", include_in_schema=False)
    async def healthy() -> Response:
        return Response("Healthy\n", media_type="text/plain")

    @app.get("/-/ready", include_in_schema=False)
    async def ready() -> Response:
        if prober.ready:
            return Response("Ready\n", media_type="text/plain")
        done, total = prober.table.probed, len(prober.table)
        return Response(
            f"Not ready: {done} of {total} paths probed\n", status_code=503, media_type="text/plain"
        )

    @app.get("/api/v1/paths", response_model=list[PathView], summary="Every planned path and its last result")
    async def paths(
        state: Annotated[State | None, Query(description="only paths in this state")] = None,
        target: Annotated[str | None, Query(max_length=253, description="only this target FQDN")] = None,
        required: Annotated[bool | None, Query(description="only required (or only optional) paths")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PATHS_PAGE)] = MAX_PATHS_PAGE,
    ) -> JSONResponse:
        out = []
        for path, result in prober.table.items():
            if target is not None and path.target.lower() != target.lower():
                continue
            if required is not None and path.required != required:
                continue
            if state is not None and (result is None or result.outcome.state is not state):
                continue
            out.append(path_view(path, result))
            if len(out) >= limit:
                break
        return JSONResponse(out)

    @app.get(
        "/api/v1/changes",
        response_model=list[ChangeView],
        summary="Hysteresis transitions (blocked, recovered) with evidence, newest first",
    )
    async def changes(
        since: Annotated[float, Query(ge=0, description="unix time; only changes after it")] = 0.0,
        limit: Annotated[int, Query(ge=1, le=MAX_CHANGES_PAGE)] = 100,
    ) -> JSONResponse:
        tracker = prober.tracker
        rows = [] if tracker is None else [change_view(c) for c in tracker.changes(since, limit)]
        return JSONResponse(rows)

    @app.get(
        "/api/v1/verdict",
        response_model=list[VerdictView],
        summary="Microsoft's supportability rule per source, and overall",
    )
    async def verdict() -> JSONResponse:
        tracker = prober.tracker
        if tracker is None:
            return JSONResponse([])
        per_source = await run_in_threadpool(tracker.verdicts)
        overall = await run_in_threadpool(tracker.verdict)
        rows = [verdict_view(source, v) for source, v in sorted(per_source.items())]
        rows.append(verdict_view("*", overall))
        return JSONResponse(rows)

    def matrix_parts() -> tuple[matrix.Matrix, list[dict[str, object]]]:
        rows = [path_view(path, result) for path, result in prober.table.items()]
        tracker = prober.tracker
        changes = [] if tracker is None else [change_view(c) for c in tracker.changes(0.0, 50)]
        return matrix.build(rows), changes

    @app.get("/matrix", response_class=HTMLResponse, include_in_schema=False)
    async def matrix_page() -> HTMLResponse:
        grid, changes = await run_in_threadpool(matrix_parts)
        subtitle = (
            f"{len(prober.table)} paths probed from {prober.source} every {prober.settings.interval:g}s"
        )
        return HTMLResponse(
            matrix.render_page(grid, changes, title=prober.inventory.organisation, subtitle=subtitle)
        )

    @app.get("/matrix/fragment", include_in_schema=False)
    async def matrix_fragment() -> JSONResponse:
        grid, changes = await run_in_threadpool(matrix_parts)
        return JSONResponse(
            {
                "table": matrix.render_table(grid),
                "summary": matrix.summary(grid),
                "changes": matrix.render_changes(changes),
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def landing() -> HTMLResponse:
        return HTMLResponse(_landing(prober))

    return app


def _landing(prober: Prober) -> str:
    counts: dict[str, int] = {}
    for _path, result in prober.table.items():
        key = result.outcome.state.value if result else "pending"
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items())) or "no paths planned"
    source = html.escape(prober.source)
    org = html.escape(prober.inventory.organisation)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>exchange-firewall-exporter</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:50em}}</style>
</head><body>
<h1>exchange-firewall-exporter</h1>
<p>Organisation <b>{org}</b>, probing from <b>{source}</b>: {len(prober.table)} paths ({summary}).</p>
<ul>
<li><a href="matrix">Path matrix</a> (who reaches whom, with evidence and the change log)</li>
<li><a href="metrics">Metrics</a> (Prometheus exposition)</li>
<li><a href="api/v1/paths">Paths</a> (JSON: every path, its state and evidence)</li>
<li><a href="api/v1/paths?state=filtered">Filtered paths</a>, <a href="api/v1/changes">changes</a>,
<a href="api/v1/verdict">supportability verdict</a></li>
<li><a href="docs">API documentation</a> (OpenAPI)</li>
<li><a href="-/healthy">Health</a> and <a href="-/ready">readiness</a></li>
</ul>
<p>Version {html.escape(__version__)}.</p>
</body></html>
"""
