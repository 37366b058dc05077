"""One UDP request/response on a *connected* socket, with the network verdicts UDP can give.

A connected socket is what lets ICMP errors reach us: port-unreachable reads as ECONNREFUSED (REFUSED),
admin-prohibited and host-unreachable as EHOSTUNREACH (UNREACHABLE); on Linux `IP_RECVERR` also surfaces
host/net-unreachable and lets us read the ICMP type, code and sender for the evidence. Silence is FILTERED
only after `attempts` sends of `timeout` each. A datagram is at most 64 KiB, so that is all we ever buffer.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from dataclasses import dataclass

from exporter.probes.contract import Resolved
from exporter.probes.conversation import Conversation, sockaddr
from exporter.probes.outcome import Outcome, State, classify_errno, errno_name, os_error_code

MAX_DATAGRAM = 65536

# Linux constants Python 3.11 does not export
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_LINUX = sys.platform.startswith("linux")
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CLOEXEC = getattr(socket, "SOCK_CLOEXEC", 0)
_ICMP_ORIGINS = {2: "ICMP", 3: "ICMPv6"}


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    rtt: float  # from the send that was answered to the reply
    attempt: int


def open_socket(family: int) -> socket.socket:
    """A non-blocking UDP socket that reports ICMP errors (Linux: with their origin)."""
    sock = socket.socket(family, socket.SOCK_DGRAM | _NONBLOCK | _CLOEXEC)
    if not _NONBLOCK:
        sock.setblocking(False)
    if _LINUX:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    return sock


def icmp_origin(sock: socket.socket) -> str:
    """`ICMP type 3 code 13 from 10.0.0.1` from the socket's error queue; "" off Linux or if none."""
    if not _LINUX:
        return ""
    found = ""
    for _ in range(8):  # drain what this probe caused; the queue is per socket and the socket is ours
        try:
            _data, ancillary, _flags, _address = sock.recvmsg(1, 512, _MSG_ERRQUEUE)
        except OSError:
            break
        for level, kind, blob in ancillary:
            if (level, kind) not in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                continue
            if len(blob) < 16 or found:
                continue
            _errno, origin, icmp_type, icmp_code, _pad, _info, _extra = struct.unpack_from("=IBBBBII", blob)
            if origin in _ICMP_ORIGINS:
                found = f"{_ICMP_ORIGINS[origin]} type {icmp_type} code {icmp_code}{_offender(blob[16:])}"
    return found


def _offender(raw: bytes) -> str:
    if len(raw) >= 8:
        family = int.from_bytes(raw[:2], sys.byteorder)
        if family == socket.AF_INET:
            return f" from {socket.inet_ntop(socket.AF_INET, raw[4:8])}"
        if family == socket.AF_INET6 and len(raw) >= 24:
            return f" from {socket.inet_ntop(socket.AF_INET6, raw[8:24])}"
    return ""


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
        sock = open_socket(resolved.family)
    except OSError as exc:
        return Outcome(State.LOCAL_ERROR, None, errno_name(os_error_code(exc)))
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
