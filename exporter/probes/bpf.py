"""Classic BPF socket filters (SO_ATTACH_FILTER): Linux, no privileges needed to attach one to a socket
of our own. Used by the locator's raw socket (only resets and SYN-ACKs reach it) and by the demo (a
listener that drops one source's packets, as a firewall's drop rule would)."""

from __future__ import annotations

import ctypes
import errno
import socket
import sys
from collections.abc import Sequence

#: SO_ATTACH_FILTER (Linux; Python does not export it); None where there is no such option
SO_ATTACH_FILTER: int | None = 26 if sys.platform.startswith("linux") else None
#: a load relative to the network header (a TCP socket's filter sees the packet from its TCP header)
SKF_NET_OFF = -0x100000

# the instructions used here (linux/filter.h)
LD_W_ABS, LD_B_ABS, LD_B_IND, LDX_B_MSH = 0x20, 0x30, 0x50, 0xB1
JEQ_K, JSET_K, AND_K, RET_K = 0x15, 0x45, 0x54, 0x06
DROP, KEEP = 0, 0xFFFFFFFF

Instruction = tuple[int, int, int, int]  # (code, jump if true, jump if false, k)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def attach(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """Attach `program` to `sock`; OSError where the platform has no socket filters."""
    if SO_ATTACH_FILTER is None:
        raise OSError(errno.ENOPROTOOPT, "SO_ATTACH_FILTER is Linux's")
    code = (_SockFilter * len(program))(*(_SockFilter(c, t, f, k & 0xFFFFFFFF) for c, t, f, k in program))
    fprog = _SockFprog(len(program), ctypes.cast(code, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))  # the kernel copies the program


def drop_source(address: int) -> list[Instruction]:
    """For a TCP socket: drop every packet from the IPv4 `address` (an int), keep the rest."""
    return [
        (LD_W_ABS, 0, 0, SKF_NET_OFF + 12),  # the IPv4 source address
        (JEQ_K, 0, 1, address),
        (RET_K, 0, 0, DROP),
        (RET_K, 0, 0, KEEP),
    ]


def resets_and_syn_acks(ipv6: bool) -> list[Instruction]:
    """For a raw IPPROTO_TCP socket: keep only segments with RST, or with SYN and ACK (the answers to a
    connect), drop the rest of the host's TCP traffic before it is queued. A raw IPv4 socket sees the IP
    header first (its length in the low nibble of byte 0); a raw IPv6 socket starts at the TCP header."""
    flags = [(LD_B_ABS, 0, 0, 13)] if ipv6 else [(LDX_B_MSH, 0, 0, 0), (LD_B_IND, 0, 0, 13)]
    return [
        *flags,
        (JSET_K, 3, 0, 0x04),  # RST: keep
        (AND_K, 0, 0, 0x12),
        (JEQ_K, 1, 0, 0x12),  # SYN and ACK: keep
        (RET_K, 0, 0, DROP),
        (RET_K, 0, 0, KEEP),
    ]
