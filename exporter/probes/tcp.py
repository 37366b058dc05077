"""TCP connect probe: open, refused, filtered or unreachable, with the OS error kept as evidence.

The engine drives these functions from socket-writable callbacks (no coroutine, no timer per probe);
`probe_tcp` wraps the same steps in a coroutine for one-off use and tests.
"""

from __future__ import annotations

import asyncio
import socket
import time

from exporter.probes.outcome import IN_PROGRESS, Outcome, State, classify_errno, errno_name

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CLOEXEC = getattr(socket, "SOCK_CLOEXEC", 0)

SockAddr = tuple[str, int] | tuple[str, int, int, int]


def open_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket. Raises OSError (EMFILE, ENOBUFS...) which is a local error."""
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK | _CLOEXEC)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock


def start_connect(sock: socket.socket, sockaddr: SockAddr) -> int:
    """Begin the handshake. Returns 0 (connected), an IN_PROGRESS code, or the error code."""
    try:
        return sock.connect_ex(sockaddr)
    except OSError as exc:  # e.g. EAFNOSUPPORT, gaierror on a bad literal
        return exc.errno or -1


def connect_result(sock: socket.socket) -> int:
    """After the socket turned writable: 0 for a completed handshake, else the error code."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def outcome_of(code: int, rtt: float, attempts: int) -> Outcome:
    if code == 0:
        return Outcome(State.OPEN, rtt, "", attempts)
    return Outcome(classify_errno(code), rtt, errno_name(code), attempts)


def filtered(timeout: float, attempts: int) -> Outcome:
    return Outcome(State.FILTERED, timeout, f"no answer to {attempts} SYN attempts of {timeout:g}s", attempts)


async def probe_tcp(sockaddr: SockAddr, family: int, timeout: float, attempts: int = 3) -> Outcome:
    """Probe one address/port; silence is FILTERED only after `attempts` tries, as PortQry does."""
    loop = asyncio.get_running_loop()
    for attempt in range(1, attempts + 1):
        try:
            sock = open_socket(family)
        except OSError as exc:
            return Outcome(State.LOCAL_ERROR, None, errno_name(exc.errno or 0), attempt)
        started = time.monotonic()
        try:
            code = start_connect(sock, sockaddr)
            if code in IN_PROGRESS:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(sock.fileno(), ready.set_result, None)
                try:
                    await asyncio.wait_for(ready, timeout)
                except TimeoutError:
                    continue
                finally:
                    loop.remove_writer(sock.fileno())
                code = connect_result(sock)
            return outcome_of(code, time.monotonic() - started, attempt)
        except asyncio.CancelledError:
            raise
        finally:
            sock.close()
    return filtered(timeout, attempts)
