"""Locating blocked paths, continuously and bounded: runs on the prober's loop, beside the probes.

A path is located when it turns blocked and again at most every `every` seconds while it stays blocked;
at most `limit` traces run at once and at most `MAX_PENDING` wait (more are dropped, and retried on the
path's next blocked probe). The target's distance comes from one of its open ports. The located device
is named by reverse DNS (cached, its own deadline). Nothing here runs for an open path: the steady-state
probe cost is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from exporter.engine.resolver import Resolver
from exporter.plan.planner import NetworkPath
from exporter.probes import locate
from exporter.probes.contract import ResolveFailure
from exporter.probes.outcome import State

log = logging.getLogger(__name__)

MAX_PENDING = 256
MAX_REMEMBERED = 200_000  # paths whose last location time is kept
NAME_TIMEOUT = 2.0
MAX_NAMES = 4096
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")


class Locator:
    """Where each blocked path is blocked (`locations`, by path key), kept fresh while it stays blocked."""

    def __init__(
        self,
        *,
        every: float = 300.0,
        limit: int = 4,
        max_hops: int = locate.MAX_HOPS,
        timeout: float = 1.0,
        open_port: Callable[[NetworkPath], int | None] | None = None,
        on_located: Callable[[NetworkPath, locate.Location], None] | None = None,
        reverse_dns: bool = True,
        local: str = "",
    ) -> None:
        self.every = every
        self.local = local  # the probes' source address: the locator traces the same route
        self.limit = limit
        self.max_hops = max_hops
        self.timeout = timeout
        self.open_port = open_port  # a port of the same target that answers, for its distance
        self.on_located = on_located
        self.reverse_dns = reverse_dns
        self.locations: dict[tuple[str | int, ...], locate.Location] = {}
        self._last: dict[tuple[str | int, ...], float] = {}
        self._running: set[tuple[str | int, ...]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._names: dict[str, str | None] = {}
        self._resolver = Resolver()

    @property
    def enabled(self) -> bool:
        return self.every > 0 and locate.available()

    def request(self, path: NetworkPath, state: State, *, again: bool = True) -> None:
        """The path is blocked (`state`): locate it unless it was located lately; with `again` False (a
        port nobody listens on) only once, so such ports cost nothing in the steady state. Call on the
        loop."""
        if not self.enabled or not state.is_block:
            return
        key = path.key
        now = time.monotonic()
        if key in self._running or now - self._last.get(key, -self.every) < self.every:
            return
        if not again and key in self._last:
            return
        if len(self._running) >= MAX_PENDING:
            return  # bounded: the next blocked probe asks again
        self._running.add(key)
        if len(self._last) >= MAX_REMEMBERED:
            self._last.clear()  # bounded: paths long gone from the plan are forgotten with the rest
        self._last[key] = now
        task = asyncio.get_running_loop().create_task(self._locate(path, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, path: NetworkPath) -> None:
        """The path is open again: its location goes (and its info series with it)."""
        self.locations.pop(path.key, None)
        self._last.pop(path.key, None)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _locate(self, path: NetworkPath, state: State) -> None:
        try:
            found = await self.locate(path, state)
            if found is None:
                return
            self.locations[path.key] = found
            where = f" over {path.family}" if path.family else ""
            log.info(
                "%s -> %s:%d/%s%s: %s", path.source, path.target, path.port, path.proto, where, found.how
            )
            if self.on_located is not None:
                self.on_located(path, found)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("locating %s:%d failed", path.target, path.port)
        finally:
            self._running.discard(path.key)

    async def locate(self, path: NetworkPath, state: State) -> locate.Location | None:
        """Locate one path now (at most `limit` at once); None when its name does not resolve."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            resolved = await self._resolver.resolve(path.address or path.target, path.family)
            if isinstance(resolved, ResolveFailure):
                return None
            distance = None
            port = self.open_port(path) if self.open_port else None
            if port is not None:
                distance = await locate.distance_to(resolved, port, self.timeout, self.max_hops, self.local)
            found = await locate.locate(
                resolved,
                path.port,
                state,
                distance=distance,
                open_port=port,
                timeout=self.timeout,
                max_hops=self.max_hops,
                local=self.local,
            )
            if found.device and self.reverse_dns:
                found = replace(found, device_name=await self._name(found.device))
            return found

    async def _name(self, address: str) -> str | None:
        """The device's name by reverse DNS, cached; None when it has none (or not in time)."""
        if address in self._names:
            return self._names[address]
        loop = asyncio.get_running_loop()
        name: str | None = None
        try:
            async with asyncio.timeout(NAME_TIMEOUT):
                host, _service = await loop.getnameinfo((address, 0), socket.NI_NAMEREQD)
            # the name comes from whoever runs that reverse zone: a host name, or nothing
            name = host.lower() if _HOSTNAME.fullmatch(host) else None
        except (TimeoutError, OSError, UnicodeError):
            name = None
        if len(self._names) < MAX_NAMES:
            self._names[address] = name
        return name
