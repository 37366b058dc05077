"""One UDP request/response on a *connected* socket, with the network verdicts UDP can give.

A connected socket is what lets ICMP errors reach us: port-unreachable reads as ECONNREFUSED (REFUSED),
admin-prohibited and host-unreachable as EHOSTUNREACH (UNREACHABLE); on Linux `IP_RECVERR` also surfaces
host/net-unreachable and lets us read the ICMP type, code and sender for the evidence. Silence is FILTERED
only after `attempts` sends of `timeout` each. A datagram is at most 64 KiB, so that is all we ever buffer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from exporter.probes import bind, errqueue
from exporter.probes.contract import Resolved
from exporter.probes.conversation import Conversation, sockaddr
from exporter.probes.outcome import Outcome, State, classify_errno, errno_name, os_error_code

MAX_DATAGRAM = 65536

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CLOEXEC = getattr(socket, "SOCK_CLOEXEC", 0)
_ICMP_ORIGINS = {errqueue.ORIGIN_ICMP: "ICMP", errqueue.ORIGIN_ICMP6: "ICMPv6"}


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    rtt: float  # from the send that was answered to the reply
    attempt: int


def open_socket(family: int, local: str = "") -> socket.socket:
    """A non-blocking UDP socket that reports ICMP errors (Linux: with their origin), bound to the source
    address `local` when there is one (a failure is bind.BindError: ours)."""
    sock = socket.socket(family, socket.SOCK_DGRAM | _NONBLOCK | _CLOEXEC)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        errqueue.enable(sock)
        bind.bind(sock, family, local, stream=False)
    except BaseException:
        sock.close()
        raise
    return sock


def icmp_origin(sock: socket.socket) -> str:
    """`ICMP type 3 code 13 from 10.0.0.1` from the socket's error queue; "" off Linux or if none."""
    found = errqueue.read(sock)
    if found is None:
        return ""
    sender = f" from {found.sender}" if found.sender else ""
    return f"{_ICMP_ORIGINS[found.origin]} type {found.type} code {found.code}{sender}"


def _error(sock: socket.socket, exc: OSError, rtt: float, attempt: int) -> Outcome:
    code = os_error_code(exc)
    origin = icmp_origin(sock)
    evidence = f"{errno_name(code)} ({origin})" if origin else errno_name(code)
    return Outcome(classify_errno(code), rtt, evidence, attempt)


async def request(
    conv: Conversation,
    resolved: Resolved,
    port: int,
    payload: bytes,
    timeout: float,
    attempts: int,
    what: str,
) -> Reply | Outcome:
    """Send `payload` up to `attempts` times and return the first datagram back, or the verdict.

    The same payload is re-sent on every attempt, so a late answer to an earlier send still counts."""
    loop = asyncio.get_running_loop()
    try:
        sock = open_socket(resolved.family, conv.local)
    except OSError as exc:  # no fds, a source address we lack: ours
        return Outcome(State.LOCAL_ERROR, None, bind.evidence(exc))
    try:
        try:
            sock.connect(sockaddr(resolved, port))  # local only: picks a route and a source port
        except OSError as exc:
            return _error(sock, exc, 0.0, 1)
        for attempt in range(1, attempts + 1):
            conv.attempts = attempt
            conv.step = f"waiting for a {what} reply"
            started = time.monotonic()
            try:
                sock.send(payload)
                async with asyncio.timeout(timeout):
                    data = await loop.sock_recv(sock, MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:
                return _error(sock, exc, time.monotonic() - started, attempt)
            conv.rtt = time.monotonic() - started
            conv.answered = True
            return Reply(data, conv.rtt, attempt)
        return Outcome(
            State.FILTERED, timeout, f"no reply to {attempts} {what} requests of {timeout:g}s", attempts
        )
    finally:
        sock.close()
