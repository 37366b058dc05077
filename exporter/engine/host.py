"""What differs between the hosts an agent runs on (Linux, Windows Server), behind three functions.

The choice is made by what the host offers, not by its name, so the same code runs (and is tested on
Linux) with any of it missing: no `resource` module (Windows) -> a fixed concurrency default; no uvloop
-> asyncio's default loop (the Proactor on Windows); a loop without fd callbacks (the Proactor) -> the
engine connects with `loop.sock_connect` (ConnectEx on Windows) instead of its callback state machine.
"""

from __future__ import annotations

import asyncio
import gc
import socket

FD_RESERVE = 64  # fds kept free for the HTTP server, logs, the state file
#: probes in flight where the host has no fd limit to derive it from. On Windows sockets are kernel
#: handles, not CRT fds, and the Proactor (IOCP) has no select() cap; 2048 concurrent connects is well
#: inside what one Windows Server host sustains while leaving ephemeral ports for Exchange itself.
NO_RLIMIT_CONCURRENCY = 2048


def default_concurrency() -> int:
    """How many probes may be in flight: the fd soft limit less a reserve (POSIX), else a fixed default."""
    try:
        import resource  # POSIX only
    except ImportError:
        return NO_RLIMIT_CONCURRENCY
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(1, min(int(soft) - FD_RESERVE, 16384))


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS), else asyncio's default loop (the Proactor on Windows:
    IOCP, no 512-socket select() cap, and the loop asyncio's own subprocess and pipe support expects)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def has_fd_callbacks(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop offers add_writer/add_reader (selector loops, uvloop) or not (the Proactor)."""
    a, b = socket.socketpair()
    try:
        loop.add_writer(a.fileno(), _nothing)
        loop.remove_writer(a.fileno())
    except NotImplementedError:
        return False
    finally:
        a.close()
        b.close()
    return True


def _nothing() -> None:
    """A writer callback that is removed before it can run."""


def machine_fqdn() -> str:
    """This machine's DNS name as Active Directory knows it (its computer object's dNSHostName).

    On Windows that is the host name plus the primary DNS suffix, which the TCP/IP parameters in the
    registry hold (a multi-homed Exchange server's reverse DNS, which `getfqdn` may follow, can name
    another interface); elsewhere, and when the registry cannot be read, `socket.getfqdn()`."""
    try:
        import winreg  # Windows only
    except ImportError:
        return socket.getfqdn()
    key = r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters"
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key) as params:  # type: ignore[attr-defined,unused-ignore]
            host = str(winreg.QueryValueEx(params, "Hostname")[0])  # type: ignore[attr-defined,unused-ignore]
            try:
                suffix = str(winreg.QueryValueEx(params, "Domain")[0])  # type: ignore[attr-defined,unused-ignore]
            except OSError:
                suffix = ""
    except OSError:
        return socket.getfqdn()
    return f"{host}.{suffix}".lower() if suffix else host.lower()


def settle_heap() -> None:
    """Move every object alive now (a new plan: its paths, targets and their label parts) out of the
    cyclic garbage collector's way, into its permanent generation. A full collection then walks only
    what probing keeps replacing (each path's last Outcome), not the whole plan: at 100,000 paths tens
    of ms instead of 250-340 ms, each of which stalled the probing loop (bench/README.md). Called once
    per plan, on the prober's thread; the previous plan's objects are unfrozen and collected first, so
    nothing accumulates in the permanent generation (that collection is the one pause a plan change
    costs).
    Reference counting frees frozen objects as usual."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
