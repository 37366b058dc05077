"""NTP probe (123/udp): one 48-byte SNTP client request; a mode-4 server reply proves the time service.

The reply must echo our transmit timestamp (RFC 4330 5), so a stray or forged packet is not taken for an
answer. Stratum and offset go into the details; stratum 0 or leap indicator 3 is an unsynchronised server
("ntp", "unsynchronised"); a kiss-o'-death (stratum 0 with an ASCII code) is ("ntp", "kiss-o'-death RATE").
Either way the port answered: OPEN.
"""

from __future__ import annotations

import os
import struct
import time

from exporter.probes import udp
from exporter.probes.contract import Resolved, Target
from exporter.probes.conversation import Conversation, ProtocolError, clean, converse, deadline, first_bytes
from exporter.probes.outcome import Outcome

NTP_EPOCH = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
PACKET = struct.Struct("!BBbbII4sQQQQ")  # li/vn/mode, stratum, poll, precision, ... four timestamps
CLIENT_VN4 = (0 << 6) | (4 << 3) | 3
MODE_SERVER = 4


def to_ntp(unix: float) -> int:
    return int((unix + NTP_EPOCH) * 2**32) & 0xFFFF_FFFF_FFFF_FFFF


def from_ntp(stamp: int) -> float:
    return stamp / 2**32 - NTP_EPOCH


def request(transmit: int) -> bytes:
    return PACKET.pack(CLIENT_VN4, 0, 0, 0, 0, 0, b"\0\0\0\0", 0, 0, 0, transmit)


def _refid(stratum: int, raw: bytes) -> str:
    if stratum <= 1:
        return clean(raw.rstrip(b"\0"))
    return ".".join(str(b) for b in raw)


def _answer(conv: Conversation, data: bytes, transmit: int, sent_unix: float) -> Outcome:
    received_unix = time.time()
    if len(data) < PACKET.size:
        raise ProtocolError(f"{len(data)}-byte reply: {first_bytes(data)}")
    first, stratum, _poll, _precision, _delay, _dispersion, refid, _ref, origin, rx, tx = PACKET.unpack_from(
        data
    )
    leap, version, mode = first >> 6, (first >> 3) & 7, first & 7
    if mode != MODE_SERVER:
        raise ProtocolError(f"mode {mode} reply (expected 4): {first_bytes(data)}")
    if origin != transmit:
        raise ProtocolError("reply does not echo our transmit timestamp")
    conv.note("stratum", str(stratum))
    conv.note("leap", str(leap))
    conv.note("ntp_version", str(version))
    conv.note("refid", _refid(stratum, refid))
    code = refid.rstrip(b"\0")
    if stratum == 0 and code and code.isalpha():
        conv.note("ntp", f"kiss-o'-death {clean(code)}")
        return conv.ok(f"NTP kiss-o'-death {clean(code)}")
    if stratum == 0 or leap == 3:
        conv.note("ntp", "unsynchronised")
        return conv.ok(f"NTP server unsynchronised (stratum {stratum}, leap indicator {leap})")
    offset = ((from_ntp(rx) - sent_unix) + (from_ntp(tx) - received_unix)) / 2
    conv.note("ntp_offset", f"{offset:+.6f}s")
    conv.note("ntp", "synchronised")
    return conv.ok(f"NTP stratum {stratum}, offset {offset:+.3f}s")


async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
    """The NTP check."""
    # random low bits: our transmit timestamp doubles as the request's nonce
    sent_unix = time.time()
    transmit = (to_ntp(sent_unix) & ~0xFFFF) | int.from_bytes(os.urandom(2), "big")

    async def body(conv: Conversation) -> Outcome:
        reply = await udp.request(conv, resolved, target.port, request(transmit), timeout, attempts, "NTP")
        if isinstance(reply, Outcome):
            return reply
        return _answer(conv, reply.data, transmit, time.time() - reply.rtt)

    return await converse("NTP", deadline(timeout, attempts), body, target.local)
