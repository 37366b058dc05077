"""TCP connect probe: open, refused, filtered or unreachable, with the OS error kept as evidence.

The engine drives these functions from socket-writable callbacks (no coroutine, no timer per probe) where
the loop has them; `probe_tcp` is the same verdicts as a coroutine, for one-off use and tests.
"""

from __future__ import annotations

import asyncio
import socket
import time

from exporter.probes import bind
from exporter.probes.outcome import Outcome, State, classify_errno, errno_name, os_error_code

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CLOEXEC = getattr(socket, "SOCK_CLOEXEC", 0)

SockAddr = tuple[str, int] | tuple[str, int, int, int]


def open_socket(family: int, local: str = "") -> socket.socket:
    """A non-blocking TCP socket, bound to the source address `local` when there is one. Raises OSError
    (EMFILE, ENOBUFS..., bind.BindError) which is a local error: `bind.evidence` says which."""
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK | _CLOEXEC)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        bind.bind(sock, family, local)
    except BaseException:
        sock.close()
        raise
    return sock


def start_connect(sock: socket.socket, sockaddr: SockAddr) -> int:
    """Begin the handshake. Returns 0 (connected), an IN_PROGRESS code, or the error code."""
    try:
        return sock.connect_ex(sockaddr)
    except OSError as exc:  # e.g. EAFNOSUPPORT, gaierror on a bad literal
        return os_error_code(exc) or -1


def connect_result(sock: socket.socket) -> int:
    """After the socket turned writable: 0 for a completed handshake, else the error code."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def outcome_of(code: int, rtt: float, attempts: int) -> Outcome:
    if code == 0:
        return Outcome(State.OPEN, rtt, "", attempts)
    return Outcome(classify_errno(code), rtt, errno_name(code), attempts)


def filtered(timeout: float, attempts: int) -> Outcome:
    return Outcome(State.FILTERED, timeout, f"no answer to {attempts} SYN attempts of {timeout:g}s", attempts)


async def probe_tcp(
    sockaddr: SockAddr, family: int, timeout: float, attempts: int = 3, local: str = ""
) -> Outcome:
    """Probe one address/port (from the source address `local`, when given); silence is FILTERED only
    after `attempts` tries, as PortQry does. Uses `loop.sock_connect`, so it runs on every loop (uvloop,
    selector loops, Windows' Proactor)."""
    loop = asyncio.get_running_loop()
    for attempt in range(1, attempts + 1):
        try:
            sock = open_socket(family, local)
        except OSError as exc:
            return Outcome(State.LOCAL_ERROR, None, bind.evidence(exc), attempt)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            continue
        except OSError as exc:
            return outcome_of(os_error_code(exc) or -1, time.monotonic() - started, attempt)
        finally:
            sock.close()
        return outcome_of(0, time.monotonic() - started, attempt)
    return filtered(timeout, attempts)
