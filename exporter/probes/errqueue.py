"""The ICMP error a Linux socket with IP_RECVERR / IPV6_RECVERR queued: its type, code and sender.

Shared by the UDP probes (the evidence of a port-unreachable or an admin-prohibited) and the locator
(time-exceeded from each hop, the device that rejected). Elsewhere there is no such queue: None.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

# Linux constants Python 3.11 does not export
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
LINUX = sys.platform.startswith("linux")
ORIGIN_ICMP, ORIGIN_ICMP6 = 2, 3
_LEVELS = ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))


@dataclass(frozen=True, slots=True)
class IcmpError:
    origin: int  # ORIGIN_ICMP or ORIGIN_ICMP6
    type: int
    code: int
    sender: str | None  # the address of whoever sent it (a router, a firewall, the host)


def enable(sock: socket.socket) -> None:
    """Ask the kernel to queue ICMP errors on `sock`, with their origin (Linux; nothing elsewhere)."""
    if not LINUX:
        return
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def read(sock: socket.socket, drain: int = 8) -> IcmpError | None:
    """The first ICMP error in the socket's queue, having drained up to `drain` entries (the queue is
    per socket and the socket is ours: what is there, this probe caused)."""
    if not LINUX:
        return None
    found: IcmpError | None = None
    for _ in range(drain):
        try:
            _data, ancillary, _flags, _address = sock.recvmsg(1, 512, MSG_ERRQUEUE)
        except OSError:
            break
        for level, kind, blob in ancillary:
            if (level, kind) not in _LEVELS or len(blob) < 16 or found is not None:
                continue
            _errno, origin, icmp_type, icmp_code, _pad, _info, _data2 = struct.unpack_from("=IBBBBII", blob)
            if origin in (ORIGIN_ICMP, ORIGIN_ICMP6):
                found = IcmpError(origin, icmp_type, icmp_code, _sender(blob[16:]))
    return found


def _sender(raw: bytes) -> str | None:
    if len(raw) >= 8:
        family = int.from_bytes(raw[:2], sys.byteorder)
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        if family == socket.AF_INET6 and len(raw) >= 24:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None
