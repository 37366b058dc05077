"""The mesh: every agent's view, pulled from the peers' /api/v1/paths, and Prometheus HTTP SD for all agents.

One agent sees one row of the matrix; the mesh adds the rows of the others. A peer whose API cannot be
reached is never shown as "all open": its planned paths are listed with `peer_error` set, which the
matrix shows as a state of its own. Pulls are bounded (concurrency, timeout, response size) and cached
for a few seconds, so a page view does not fan out to every peer each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from exporter.inventory.model import Inventory
from exporter.outputs.api import path_view
from exporter.outputs.history import PrometheusSettings
from exporter.plan.planner import NetworkPath

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class MeshSettings:
    """Where the other agents are and how to reach them."""

    enabled: bool = False
    port: int = 10135
    scheme: str = "http"
    members: str = "exchange"
    extra: tuple[str, ...] = ()
    advertise: str = ""  # how peers and Prometheus reach this agent: host[:port]
    auth: tuple[str, str] | None = None
    verify: str | bool = True
    timeout: float = 5.0
    prometheus: PrometheusSettings | None = None  # the mesh from Prometheus instead of the peers


@dataclass(frozen=True, slots=True)
class Peer:
    identity: str  # the agent's --source (an inventory member's FQDN, or a name given with the URL)
    url: str  # base URL of its API, e.g. http://10.1.0.11:10135
    site: str = ""
    role: str = ""


def peers_of(
    inventory: Inventory,
    *,
    me: str,
    port: int,
    scheme: str = "http",
    members: str = "exchange",
    extra: Sequence[str] = (),
) -> list[Peer]:
    """Agents expected on the inventory's members (at `port`) plus extra vantage points.

    `extra` entries are `URL` or `NAME=URL` (NAME is that agent's --source; default the URL's host).
    """
    found: list[Peer] = []
    candidates: list[Any] = []
    if members in ("exchange", "all"):
        candidates += list(inventory.servers)
    if members == "all":
        candidates += list(inventory.domain_controllers)
    for member in candidates:
        host = member.address or member.fqdn
        host = f"[{host}]" if ":" in host else host
        found.append(Peer(member.fqdn, f"{scheme}://{host}:{port}", member.site, member.primary_role))
    for item in extra:
        name, sep, url = item.partition("=")
        if not sep:
            url, name = item, httpx.URL(item).host
        found.append(Peer(name, url.rstrip("/"), "", "vantage"))
    mine = me.lower().rstrip(".")
    unique: dict[str, Peer] = {}
    for peer in found:
        if peer.identity.lower().rstrip(".") != mine:
            unique.setdefault(peer.identity.lower(), peer)
    return list(unique.values())


class Mesh:
    """Pulls peers' paths; `rows()` is every path of every agent, self included."""

    def __init__(
        self,
        peers: Callable[[], list[Peer]],
        own_rows: Callable[[], list[dict[str, Any]]],
        plan_for: Callable[[str], list[NetworkPath]],
        *,
        timeout: float = 5.0,
        concurrency: int = 16,
        auth: tuple[str, str] | None = None,
        verify: str | bool = True,
    ) -> None:
        self.peers = peers
        self.own_rows = own_rows
        self.plan_for = plan_for
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.auth = auth
        self.verify = verify
        self._cache: tuple[float, list[dict[str, Any]], dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def rows(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """(rows, peer errors by identity), at most CACHE_SECONDS old."""
        async with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > CACHE_SECONDS:
                rows, errors = await self._pull()
                self._cache = (time.monotonic(), rows, errors)
            return self._cache[1], self._cache[2]

    async def _pull(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        peers = self.peers()
        rows = list(self.own_rows())
        errors: dict[str, str] = {}
        limit = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, auth=self.auth, verify=self.verify) as client:

            async def one(peer: Peer) -> tuple[Peer, list[dict[str, Any]] | str]:
                async with limit:
                    try:
                        return peer, await asyncio.wait_for(self._fetch(client, peer), self.timeout * 2)
                    except TimeoutError:
                        return peer, f"no answer within {self.timeout * 2:g}s"
                    except httpx.HTTPError as exc:
                        return peer, f"{type(exc).__name__}: {str(exc)[:200]}"
                    except ValueError as exc:
                        return peer, f"bad answer: {str(exc)[:200]}"

            results = await asyncio.gather(*(one(peer) for peer in peers))
        for peer, got in results:
            if isinstance(got, str):
                errors[peer.identity] = got
                rows.extend(self._placeholder_rows(peer, got))
            else:
                rows.extend(got)
        return rows, errors

    async def _fetch(self, client: httpx.AsyncClient, peer: Peer) -> list[dict[str, Any]]:
        async with client.stream("GET", f"{peer.url}/api/v1/paths") as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ValueError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        data = httpx.Response(200, content=bytes(body)).json()
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise ValueError("not a list of paths")
        return [
            row for row in data if isinstance(row.get("source"), str) and isinstance(row.get("target"), str)
        ]

    def _placeholder_rows(self, peer: Peer, error: str) -> list[dict[str, Any]]:
        """What the peer should be probing, marked as unknown because its agent did not answer."""
        rows = []
        for path in self.plan_for(peer.identity):
            row = path_view(path, None)  # every field of a path, none of them a result
            row["source_site"] = path.source_site or peer.site
            row["evidence"] = f"agent {peer.url} unreachable: {error}"
            row["peer_error"] = error
            rows.append(row)
        if not rows:
            rows.append(
                {
                    "source": peer.identity,
                    "source_site": peer.site,
                    "target": peer.identity,
                    "target_site": peer.site,
                    "target_role": peer.role,
                    "port": 0,
                    "proto": "tcp",
                    "service": "agent-api",
                    "kind": "mesh",
                    "check": "api",
                    "required": False,
                    "state": None,
                    "evidence": f"agent {peer.url} unreachable: {error}",
                    "peer_error": error,
                }
            )
        return rows


def service_discovery(peers: Sequence[Peer], me: Peer) -> list[dict[str, Any]]:
    """Prometheus HTTP SD: one target group per agent, with its identity, site and role as meta labels."""
    groups = []
    for peer in [me, *peers]:
        url = httpx.URL(peer.url)
        host = url.host if ":" not in url.host else f"[{url.host}]"
        groups.append(
            {
                "targets": [f"{host}:{url.port or (443 if url.scheme == 'https' else 80)}"],
                "labels": {
                    "__meta_exchange_agent": peer.identity,
                    "__meta_exchange_site": peer.site,
                    "__meta_exchange_role": peer.role,
                    "__scheme__": url.scheme,
                },
            }
        )
    return groups
