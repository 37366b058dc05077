"""The JSON view of the paths: the same fields for `/api/v1/paths` and `check --output json`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from exporter.outputs.pathtable import PathResult
from exporter.plan.planner import Path


class PathView(BaseModel):
    """One path and what its last probe said."""

    source: str
    source_site: str
    target: str
    target_site: str
    target_role: str
    port: int
    proto: str
    service: str
    kind: str
    check: str
    required: bool
    state: str | None  # None until the first probe
    evidence: str
    rtt_seconds: float | None
    attempts: int | None
    last_probe: str | None  # RFC 3339, UTC


def path_view(path: Path, result: PathResult | None) -> dict[str, Any]:
    outcome = result.outcome if result else None
    return {
        "source": path.source,
        "source_site": path.source_site,
        "target": path.target,
        "target_site": path.target_site,
        "target_role": path.target_role,
        "port": path.port,
        "proto": path.proto,
        "service": path.service,
        "kind": path.kind.value,
        "check": path.check,
        "required": path.required,
        "state": outcome.state.value if outcome else None,
        "evidence": outcome.evidence if outcome else "",
        "rtt_seconds": round(outcome.rtt, 6) if outcome and outcome.rtt is not None else None,
        "attempts": outcome.attempts if outcome else None,
        "last_probe": (
            dt.datetime.fromtimestamp(result.wall, dt.UTC).isoformat(timespec="milliseconds")
            if result
            else None
        ),
    }
