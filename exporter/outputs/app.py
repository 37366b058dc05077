"""The HTTP service: /metrics, /-/healthy, /-/ready, the landing page and the JSON API."""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from exporter import __version__
from exporter.inventory.model import Inventory
from exporter.outputs import history, matrix, mesh, metrics
from exporter.outputs.api import ChangeView, PathView, VerdictView, change_view, path_view, verdict_view
from exporter.outputs.exposition import PathExposition
from exporter.outputs.limits import API_RATE, RequestLimits
from exporter.outputs.mesh import MeshSettings
from exporter.outputs.view import AgentView
from exporter.plan.planner import NetworkPath
from exporter.probes.locate import Location
from exporter.probes.outcome import State
from exporter.state.status import path_key

MAX_PATHS_PAGE = 100_000

Scope = Annotated[str, Query(pattern="^(mesh|local)$")]
HISTORY_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "?at= on an agent without --prometheus.url: it has no history"},
    502: {"description": "Prometheus did not answer (the message says why)"},
}
#: `?at=`: a Unix time (seconds) or an RFC 3339 time, as Prometheus's own `time` parameter
At = Annotated[
    float | dt.datetime | None,
    Query(
        description="a past moment, from Prometheus: a Unix time or RFC 3339 (404 without --prometheus.url)"
    ),
]

MAX_CHANGES_PAGE = 10_000


def create_app(
    agent: AgentView,
    exposition: PathExposition,
    mesh_settings: MeshSettings | None = None,
    planner: Callable[[Inventory, str], list[NetworkPath]] | None = None,
    api_rate: float = API_RATE,
    local_agents: Sequence[AgentView] = (),
) -> FastAPI:
    """The service of `agent`; `local_agents` are more agents in the same process (the demo's mesh):
    their rows and changes join this agent's in the matrix and /api/v1/mesh, as peers' would."""
    app = FastAPI(
        title="exchange-firewall-exporter",
        version=__version__,
        description="Proves that every network path an Exchange organisation needs is open.",
        responses={
            400: {"description": "the query string is not UTF-8"},
            413: {"description": "a request body was sent (this service takes none)"},
            414: {"description": "query string too long"},
            429: {"description": "too many requests from this client; retry after a second"},
        },
    )
    app.add_middleware(RequestLimits, api_rate=api_rate, api_burst=max(api_rate * 3, 1.0))
    registry = metrics.build_registry(agent)
    app.state.agent = agent
    settings = mesh_settings or MeshSettings()

    def peers() -> list[mesh.Peer]:
        return mesh.peers_of(
            agent.inventory,
            me=agent.source,
            port=settings.port,
            scheme=settings.scheme,
            members=settings.members,
            extra=settings.extra,
        )

    def me() -> mesh.Peer:
        """This agent as its peers and Prometheus reach it."""
        member = agent.inventory.find(agent.source)
        if settings.advertise:
            url = httpx.URL(f"{settings.scheme}://{settings.advertise}")
            base = str(url.copy_with(port=url.port or settings.port)).rstrip("/")
        else:
            host = (member.address or member.fqdn) if member else agent.source
            base = f"{settings.scheme}://{f'[{host}]' if ':' in host else host}:{settings.port}"
        site = member.site if member else ""
        return mesh.Peer(agent.source, base, site, member.primary_role if member else "observer")

    def own_rows() -> list[dict[str, Any]]:
        rows = []
        for one in (agent, *local_agents):
            where = one.locations
            rows += [path_view(path, result, where.get(path.key)) for path, result in one.table.items()]
        return rows

    def plan_for(identity: str) -> list[NetworkPath]:
        return planner(agent.inventory, identity) if planner else []

    the_mesh = mesh.Mesh(
        peers, own_rows, plan_for, timeout=settings.timeout, auth=settings.auth, verify=settings.verify
    )

    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        # rendering is CPU-bound on large plans: worker threads, never the probing loop. gzip (what
        # Prometheus asks for) reuses the unchanged compressed blocks; plain is streamed block by block,
        # each made in a worker thread when the client is ready for it, so no step holds the
        # interpreter long enough to delay the probes
        if metrics.wants_gzip(request.headers.get("accept-encoding", "")):
            body, headers = await run_in_threadpool(metrics.respond_gzip, exposition, registry)
            return Response(body, media_type=metrics.CONTENT_TYPE, headers=headers)
        return StreamingResponse(
            metrics.render_blocks(exposition, registry),
            media_type=metrics.CONTENT_TYPE,
            headers={"Vary": "Accept-Encoding"},
        )

    def located_by_key(one: AgentView) -> dict[str, Location]:
        """`one`'s locations by the key changes are stored under (`source|target|port|proto|check`)."""
        locations = one.locations
        if not locations:
            return {}
        return {path_key(p): locations[p.key] for p in one.table.paths if p.key in locations}

    @app.get("/-/healthy", include_in_schema=False)
    async def healthy() -> Response:
        return Response("Healthy\n", media_type="text/plain")

    @app.get("/-/ready", include_in_schema=False)
    async def ready() -> Response:
        if agent.ready:
            return Response("Ready\n", media_type="text/plain")
        table = agent.table
        done, total = table.probed, len(table)
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
        table = agent.table
        for index, (path, outcome) in enumerate(zip(table.paths, table.outcomes[:], strict=True)):
            if target is not None and path.target.lower() != target.lower():
                continue
            if required is not None and path.required != required:
                continue
            if state is not None and (outcome is None or outcome.state is not state):
                continue
            out.append(path_view(path, table.result(index), agent.locations.get(path.key)))
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
        state = agent.state
        where = located_by_key(agent)
        rows = (
            [] if state is None else [change_view(c, where.get(c.key)) for c in state.changes(since, limit)]
        )
        return JSONResponse(rows)

    @app.get(
        "/api/v1/verdict",
        response_model=list[VerdictView],
        summary="Microsoft's supportability rule per source, and overall",
    )
    async def verdict() -> JSONResponse:
        state = agent.state
        if state is None:
            return JSONResponse([])
        per_source = await run_in_threadpool(state.verdicts, True)
        overall = await run_in_threadpool(state.verdict)
        rows = [verdict_view(source, v) for source, v in sorted(per_source.items())]
        rows.append(verdict_view("*", overall))
        return JSONResponse(rows)

    def local_changes(limit: int) -> list[dict[str, Any]]:
        """The change log of this agent and of the in-process ones, newest first."""
        out: list[dict[str, Any]] = []
        for one in (agent, *local_agents):
            state = one.state
            if state is None:
                continue
            located = located_by_key(one)
            out += [dict(change_view(c, located.get(c.key))) for c in state.changes(0.0, limit)]
        out.sort(key=lambda change: str(change.get("time", "")), reverse=True)
        return out[:limit]

    from_prometheus = history.PrometheusMesh(settings.prometheus) if settings.prometheus else None

    def moment(at: float | dt.datetime | None) -> float | None:
        """`?at=` as a Unix time; 404 when there is no history to read it from."""
        if at is None:
            return None
        if from_prometheus is None:
            # no history on this agent: the past it asks for is not here (a 404, as for a missing page)
            raise HTTPException(404, "?at= needs the mesh from Prometheus: start with --prometheus.url")
        if isinstance(at, dt.datetime):
            return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()
        if not math.isfinite(at):
            raise HTTPException(422, "at must be a finite Unix time or an RFC 3339 time")
        return at

    async def prometheus_view(when: float | None) -> history.View:
        """The mesh from Prometheus; 502 (with why) when it cannot answer."""
        assert from_prometheus is not None
        try:
            return await from_prometheus.view(when)
        except history.QueryError as exc:
            raise HTTPException(502, str(exc)) from None

    @dataclass
    class Parts:
        grid: matrix.Matrix
        changes: list[dict[str, Any]]
        subtitle: str
        notice: str = ""
        agents_down: tuple[str, ...] = ()

    async def matrix_parts(scope: str, at: float | None) -> Parts:
        if scope == "mesh" and from_prometheus is not None:
            try:
                view = await from_prometheus.view(at)
            except history.QueryError as exc:
                if at is not None:
                    raise HTTPException(502, str(exc)) from None
                rows = await run_in_threadpool(own_rows)
                grid = await run_in_threadpool(matrix.build, rows)
                return Parts(
                    grid,
                    await run_in_threadpool(local_changes, 50),
                    f"{len(rows)} paths probed from {agent.source} every {agent.interval:g}s",
                    notice=f"The mesh is not available: {exc}. Showing this agent's own paths.",
                )
            agents = len({row["source"] for row in view.rows})
            grid = await run_in_threadpool(matrix.build, view.rows)
            down = tuple(sorted(view.agents_down))
            return Parts(
                grid,
                view.changes[:50],
                f"{len(view.rows)} paths of {agents} agents from Prometheus "
                f"({len(down)} not scraped now), asked by {agent.source}",
                agents_down=down,
            )
        changes = await run_in_threadpool(local_changes, 50)
        if scope == "mesh" and settings.enabled:
            rows, errors = await the_mesh.rows()
            agents = len({row["source"] for row in rows})
            where = f"{len(rows)} paths probed by {agents} agents ({len(errors)} not answering), seen from"
        else:
            rows = await run_in_threadpool(own_rows)
            agents = len({row["source"] for row in rows})
            where = (
                f"{len(rows)} paths probed by {agents} agents in"
                if local_agents
                else f"{len(rows)} paths probed from"
            )
        grid = await run_in_threadpool(matrix.build, rows)
        return Parts(grid, changes, f"{where} {agent.source} every {agent.interval:g}s")

    @app.get("/matrix", response_class=HTMLResponse, include_in_schema=False)
    async def matrix_page(scope: Scope = "mesh", at: At = None) -> HTMLResponse:
        when = moment(at)
        parts = await matrix_parts(scope, when)
        return HTMLResponse(
            matrix.render_page(
                parts.grid,
                parts.changes,
                title=agent.inventory.organisation,
                subtitle=parts.subtitle,
                at=when,
                history=from_prometheus is not None and scope == "mesh",
                notice=parts.notice,
                agents_down=parts.agents_down,
            )
        )

    @app.get("/matrix/fragment", include_in_schema=False)
    async def matrix_fragment(scope: Scope = "mesh", at: At = None) -> JSONResponse:
        when = moment(at)
        parts = await matrix_parts(scope, when)
        return JSONResponse(
            {
                "table": matrix.render_table(parts.grid, at=when, agents_down=parts.agents_down),
                "summary": matrix.summary(parts.grid),
                "changes": matrix.render_changes(parts.changes),
                "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )

    @app.get(
        "/api/v1/mesh",
        response_model=list[PathView],
        responses=HISTORY_RESPONSES,
        summary="Every agent's paths: from Prometheus (?at= a past moment) when --prometheus.url is set, "
        "else this agent's and its peers' (a peer that did not answer is marked)",
    )
    async def mesh_paths(at: At = None) -> JSONResponse:
        when = moment(at)
        if from_prometheus is not None:
            return JSONResponse((await prometheus_view(when)).rows)
        if not settings.enabled:
            return JSONResponse(await run_in_threadpool(own_rows))
        rows, _errors = await the_mesh.rows()
        return JSONResponse(rows)

    @app.get(
        "/api/v1/mesh/changes",
        response_model=list[ChangeView],
        responses=HISTORY_RESPONSES,
        summary="The mesh-wide change log from Prometheus: each path's latest change to or from blocked",
    )
    async def mesh_changes(at: At = None) -> JSONResponse:
        when = moment(at)
        if from_prometheus is None:
            return JSONResponse(await run_in_threadpool(local_changes, MAX_CHANGES_PAGE))
        return JSONResponse((await prometheus_view(when)).changes)

    @app.get("/api/v1/sd", summary="Prometheus HTTP service discovery for every agent of the mesh")
    async def service_discovery() -> JSONResponse:
        return JSONResponse(mesh.service_discovery(peers() if settings.enabled else [], me()))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def landing() -> HTMLResponse:
        return HTMLResponse(_landing(agent))

    return app


def _landing(agent: AgentView) -> str:
    counts: dict[str, int] = {}
    for outcome in agent.table.outcomes[:]:
        key = outcome.state.value if outcome else "pending"
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items())) or "no paths planned"
    source = html.escape(agent.source)
    org = html.escape(agent.inventory.organisation)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>exchange-firewall-exporter</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:50em}}</style>
</head><body>
<h1>exchange-firewall-exporter</h1>
<p>Organisation <b>{org}</b>, probing from <b>{source}</b>: {len(agent.table)} paths ({summary}).</p>
<ul>
<li><a href="matrix">NetworkPath matrix</a> (who reaches whom, with evidence and the change log)</li>
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
