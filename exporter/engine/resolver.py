"""Name resolution for targets: literal addresses pass through, names are resolved off the loop and cached.

A failed lookup is DNS_ERROR (the name) or LOCAL_ERROR (our resolver machinery), never a network block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Iterable

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
        self._cache: dict[tuple[str, str], tuple[float, Resolved | ResolveFailure]] = {}
        self._literals: dict[str, Resolved] = {}
        self._names: set[str] = set()  # known not to be literal addresses
        self._pending: dict[tuple[str, str], asyncio.Future[Resolved | ResolveFailure]] = {}

    def cached(
        self, name: str, now: float | None = None, family: str = ""
    ) -> Resolved | ResolveFailure | None:
        """A literal address as it is; a name's cached address (of `family`, "ipv4" or "ipv6", when
        given; else whatever the name gives first); None when it must be looked up."""
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
        entry = self._cache.get((name, family))
        if entry is None:
            return None
        expires, value = entry
        if (now if now is not None else time.monotonic()) >= expires:
            return None
        return value

    async def resolve(self, name: str, family: str = "") -> Resolved | ResolveFailure:
        hit = self.cached(name, family=family)
        if hit is not None:
            return hit
        key = (name, family)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(name, family))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _lookup(self, name: str, family: str = "") -> Resolved | ResolveFailure:
        loop = asyncio.get_running_loop()
        value: Resolved | ResolveFailure
        wanted = _FAMILIES.get(family, self.family)
        try:
            infos = await loop.getaddrinfo(name, None, family=wanted, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            state = State.LOCAL_ERROR if exc.errno in _LOCAL_GAI else State.DNS_ERROR
            value = ResolveFailure(state, f"{_gai_name(exc.errno)}: {exc.strerror}")
        except (OSError, UnicodeError) as exc:
            value = ResolveFailure(State.DNS_ERROR, f"bad name: {type(exc).__name__}")
        else:
            if not infos:
                value = ResolveFailure(State.DNS_ERROR, "no addresses")
            else:
                got, _type, _proto, _canon, sockaddr = infos[0]
                value = Resolved(int(got), str(sockaddr[0]))
        ttl = POSITIVE_TTL if isinstance(value, Resolved) else NEGATIVE_TTL
        self._cache[(name, family)] = (time.monotonic() + ttl, value)
        return value


_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def _gai_name(code: int | None) -> str:
    for name in dir(socket):
        if name.startswith("EAI_") and getattr(socket, name) == code:
            return name
    return f"EAI {code}"


def families_of(names: Iterable[str], timeout: float = 3.0, workers: int = 8) -> dict[str, frozenset[str]]:
    """The address families ("ipv4", "ipv6") each name resolves to now, for planning a path per family.
    Blocking, and bounded: the lookups share a small pool and `timeout` in all. A name that does not
    resolve (in time) is left out: its paths resolve at probe time, and a failure reads dns_error."""
    wanted = sorted({name.lower() for name in names if literal(name) is None})
    if not wanted:
        return {}

    def lookup(name: str) -> frozenset[str]:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        return frozenset(
            "ipv6" if family == socket.AF_INET6 else "ipv4"
            for family, *_rest in infos
            if family in (socket.AF_INET, socket.AF_INET6)
        )

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(wanted)))
    futures = {pool.submit(lookup, name): name for name in wanted}
    done, _late = concurrent.futures.wait(futures, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    found: dict[str, frozenset[str]] = {}
    for future in done:
        if future.exception() is None and future.result():
            found[futures[future]] = future.result()
    return found
