"""Name resolution for targets: literal addresses pass through, names are resolved off the loop and cached.

A failed lookup is DNS_ERROR (the name) or LOCAL_ERROR (our resolver machinery), never a network block.
"""

from __future__ import annotations

import asyncio
import socket
import time

from exporter.probes.contract import Resolved, ResolveFailure, literal
from exporter.probes.outcome import State

POSITIVE_TTL = 300.0
MAX_LITERALS = 1_000_000
NEGATIVE_TTL = 30.0

_LOCAL_GAI = {
    getattr(socket, name)
    for name in ("EAI_MEMORY", "EAI_SYSTEM", "EAI_FAMILY", "EAI_SOCKTYPE", "EAI_BADFLAGS", "EAI_SERVICE")
    if hasattr(socket, name)
}


class Resolver:
    """Caches one address per name; lookups run in the loop's executor, at most one per name at a time."""

    def __init__(self, family: int = socket.AF_UNSPEC) -> None:
        self.family = family
        self._cache: dict[str, tuple[float, Resolved | ResolveFailure]] = {}
        self._literals: dict[str, Resolved] = {}
        self._names: set[str] = set()  # known not to be literal addresses
        self._pending: dict[str, asyncio.Future[Resolved | ResolveFailure]] = {}

    def cached(self, name: str, now: float | None = None) -> Resolved | ResolveFailure | None:
        fixed = self._literals.get(name)
        if fixed is not None:
            return fixed
        if name not in self._names:
            fixed = literal(name)
            if fixed is not None:
                if len(self._literals) < MAX_LITERALS:
                    self._literals[name] = fixed  # parsed once, not on every probe
                return fixed
            self._names.add(name)
        entry = self._cache.get(name)
        if entry is None:
            return None
        expires, value = entry
        if (now if now is not None else time.monotonic()) >= expires:
            return None
        return value

    async def resolve(self, name: str) -> Resolved | ResolveFailure:
        hit = self.cached(name)
        if hit is not None:
            return hit
        pending = self._pending.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(name))
            self._pending[name] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(name, None))
        return await asyncio.shield(pending)

    async def _lookup(self, name: str) -> Resolved | ResolveFailure:
        loop = asyncio.get_running_loop()
        value: Resolved | ResolveFailure
        try:
            infos = await loop.getaddrinfo(name, None, family=self.family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            state = State.LOCAL_ERROR if exc.errno in _LOCAL_GAI else State.DNS_ERROR
            value = ResolveFailure(state, f"{_gai_name(exc.errno)}: {exc.strerror}")
        except (OSError, UnicodeError) as exc:
            value = ResolveFailure(State.DNS_ERROR, f"bad name: {type(exc).__name__}")
        else:
            if not infos:
                value = ResolveFailure(State.DNS_ERROR, "no addresses")
            else:
                family, _type, _proto, _canon, sockaddr = infos[0]
                value = Resolved(int(family), str(sockaddr[0]))
        ttl = POSITIVE_TTL if isinstance(value, Resolved) else NEGATIVE_TTL
        self._cache[name] = (time.monotonic() + ttl, value)
        return value


def _gai_name(code: int | None) -> str:
    for name in dir(socket):
        if name.startswith("EAI_") and getattr(socket, name) == code:
            return name
    return f"EAI {code}"
