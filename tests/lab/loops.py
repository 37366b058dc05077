"""The three event loops the engine and the probes must work on: uvloop (Linux), asyncio's selector loop,
and a stand-in for Windows' Proactor API surface.

The stand-in is a selector loop whose public `add_reader`/`add_writer` raise NotImplementedError, exactly
as `asyncio.ProactorEventLoop` does; `sock_connect`, `sock_recv` and the stream transports keep working,
as they do on the Proactor. (`remove_reader`/`remove_writer` are left alone: the selector loop's own
sock_* machinery calls them, and nothing can be removed that could not be added.) It stands in for the
API only: the I/O underneath is still epoll, and the network in the tests stays real.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class NoFdCallbacksLoop(asyncio.SelectorEventLoop):
    """A loop that refuses fd callbacks, as the Proactor does."""

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError


def _loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if sys.platform == "win32":  # the Windows workflow: the real Proactor, and the selector loop
        return {"proactor": asyncio.ProactorEventLoop, "selector": asyncio.SelectorEventLoop}  # type: ignore[attr-defined,unused-ignore]
    import uvloop  # Linux: always installed by the lock; a missing uvloop must fail, not shrink the suite

    return {
        "uvloop": uvloop.new_event_loop,
        "selector": asyncio.SelectorEventLoop,
        "no-fd-callbacks": NoFdCallbacksLoop,
    }


LOOPS = _loops()


def run_on(kind: str, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to completion on a fresh loop of `kind`."""
    loop = LOOPS[kind]()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()
