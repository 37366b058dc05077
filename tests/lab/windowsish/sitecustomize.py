"""Loaded at interpreter start (PYTHONPATH) by the portability tests: this interpreter looks like Windows'
to the exporter. The POSIX-only modules and uvloop cannot be imported (ModuleNotFoundError, as there), and
asyncio's default loop refuses fd callbacks, as the Proactor does. The network stays Linux's and real.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from typing import Any

BLOCKED = frozenset({"uvloop", "resource", "fcntl", "pwd", "grp"})


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: a Windows-like interpreter)")
        return None


for _name in list(sys.modules):
    if _name.partition(".")[0] in BLOCKED:
        del sys.modules[_name]
sys.meta_path.insert(0, _Absent())


class _NoFdCallbacksLoop(asyncio.SelectorEventLoop):
    def add_reader(self, *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError

    def add_writer(self, *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _NoFdCallbacksLoop()


asyncio.set_event_loop_policy(_Policy())
