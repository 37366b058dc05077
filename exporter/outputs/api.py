"""The JSON view of the paths: the same fields for `/api/v1/paths` and `check --output json`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from exporter.plan.planner import NetworkPath
from exporter.probes.locate import Location
from exporter.state.results import PathResult
from exporter.state.status import Classification, PathStatus, Transition
from exporter.state.tracker import Verdict


class HopView(BaseModel):
    ttl: int
    answer: str  # time-exceeded, open, refused, silent, admin-prohibited, host-unreachable ...
    address: str | None


class LocationView(BaseModel):
    """Where a blocked path is blocked, as TTL-limited connects tell it."""

    how: str
    hop: int | None
    device: str | None
    device_name: str | None
    verdict: str  # dropped, rejected, reset-by-device, reset-host-or-last-hop, unavailable
    hops: list[HopView]
    located_at: str | None


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
    family: str  # ipv4 | ipv6 ("" when the name is resolved at probe time)
    address: str | None  # the address probed, when the inventory or planning named one
    endpoint: str  # a further address of the target (a replication network), "" for its first
    required: bool
    state: str | None  # None until the first probe
    evidence: str
    rtt_seconds: float | None
    attempts: int | None
    last_probe: str | None  # RFC 3339, UTC
    details: dict[str, str]
    status: str | None  # hysteresis: pending, open, blocked (None without a tracker)
    classification: str | None  # pending, ok, recovered, newly_blocked, never_open
    blocked: bool | None  # by the network (a port nobody listens on is not_listening instead)
    newly_blocked: bool | None
    not_listening: bool | None  # the host refused a path that never worked: no firewall, no violation
    state_since: str | None
    first_probe: str | None
    first_open: str | None
    last_open: str | None
    consecutive_non_open: int | None
    location: LocationView | None  # where it is blocked, once located (blocked paths only)
    agent: str | None = None  # the mesh from Prometheus: the agent's instance label
    agent_up: bool | None = None  # False: Prometheus cannot scrape that agent now (its last known state)


class ChangeView(BaseModel):
    """One hysteresis transition of one path."""

    time: str
    path: str  # source|target|port|proto|check
    from_status: str
    to_status: str
    classification: str
    evidence: str
    location: LocationView | None  # a change to blocked: where the path is blocked now, once located


class VerdictView(BaseModel):
    """Microsoft's rule for one source: every required Exchange-Exchange and Exchange-DC path open."""

    source: str
    compliant: bool | None  # None: not yet determined, or not applicable (see reason)
    applicable: bool  # False for an observer: only Exchange servers' and DCs' own paths are judged
    reason: str  # why compliant is None
    required: int
    open: int
    blocked: int
    not_listening: int  # required paths whose host refused and that never worked: not violations
    unknown: int
    offending: list[str]  # target:port/proto of blocked required paths
    undetermined: list[str]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def location_view(location: Location | None) -> dict[str, Any] | None:
    if location is None:
        return None
    return {
        "how": location.how,
        "hop": location.hop,
        "device": location.device,
        "device_name": location.device_name,
        "verdict": location.verdict,
        "hops": [{"ttl": h.ttl, "answer": h.answer, "address": h.address} for h in location.hops],
        "located_at": iso(location.located_at) if location.located_at else None,
    }


def path_view(
    path: NetworkPath, result: PathResult | None, location: Location | None = None
) -> dict[str, Any]:
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
        "family": path.family,
        "address": path.address,
        "endpoint": path.endpoint,
        "required": path.required,
        "state": outcome.state.value if outcome else None,
        "evidence": outcome.evidence if outcome else "",
        "rtt_seconds": round(outcome.rtt, 6) if outcome and outcome.rtt is not None else None,
        "attempts": outcome.attempts if outcome else None,
        "last_probe": iso(result.wall) if result else None,
        "details": dict(outcome.details) if outcome else {},
        **status_view(result.status if result else None),
        "location": location_view(location),
    }


def status_view(status: PathStatus | None) -> dict[str, Any]:
    if status is None:
        return dict.fromkeys(_STATUS_FIELDS)
    return {
        "status": status.status.value,
        "classification": status.classification.value,
        "blocked": status.blocked,
        "newly_blocked": status.blocked and status.classification is Classification.NEWLY_BLOCKED,
        "not_listening": status.not_listening,
        "state_since": iso(status.state_since),
        "first_probe": iso(status.first_probe),
        "first_open": iso(status.first_open),
        "last_open": iso(status.last_open),
        "consecutive_non_open": status.consecutive_non_open,
    }


_STATUS_FIELDS = (
    "status",
    "classification",
    "blocked",
    "newly_blocked",
    "not_listening",
    "state_since",
    "first_probe",
    "first_open",
    "last_open",
    "consecutive_non_open",
)


def change_view(change: Transition, location: Location | None = None) -> dict[str, Any]:
    """One transition; a change to blocked carries where the path is blocked now, once located."""
    return {
        "time": iso(change.time),
        "path": change.key,
        "from_status": change.from_status.value,
        "to_status": change.to_status.value,
        "classification": change.classification.value,
        "evidence": change.evidence,
        "location": location_view(location) if change.to_status.value == "blocked" else None,
    }


def verdict_view(source: str, verdict: Verdict) -> dict[str, Any]:
    def name(path: NetworkPath) -> str:
        where = " [ipv6]" if path.family == "ipv6" else ""  # one family of a dual-stack target
        return f"{path.target}:{path.port}/{path.proto}{where}" + (
            f" [{path.endpoint}]" if path.endpoint else ""
        )

    return {
        "source": source,
        "compliant": verdict.compliant,
        "applicable": verdict.applicable,
        "reason": verdict.reason,
        "required": verdict.required,
        "open": verdict.open,
        "blocked": verdict.blocked,
        "not_listening": verdict.not_listening,
        "unknown": verdict.unknown,
        "offending": [name(p) for p in verdict.offending],
        "undetermined": [name(p) for p in verdict.undetermined],
    }
