"""SMB probe (445/tcp): one SMB2 NEGOTIATE, hand-rolled (MS-SMB2 2.2.3/2.2.4), no session set up.

We offer 2.0.2 to 3.1.1 (with the pre-auth integrity context 3.1.1 requires) and report the dialect the
server picked, whether it requires signing (DCs do), and its clock skew from SystemTime. A server that
answers SMB1 only is still an SMB server: OPEN with ("smb_dialect", "SMB1").
"""

from __future__ import annotations

import os
import struct
import time

from exporter.probes.contract import Resolved, Target
from exporter.probes.conversation import (
    Conversation,
    ProtocolError,
    Stream,
    connected,
    converse,
    deadline,
    first_bytes,
)
from exporter.probes.outcome import Outcome

DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)
DIALECT_NAMES = {
    0x0202: "2.0.2",
    0x0210: "2.1",
    0x0300: "3.0",
    0x0302: "3.0.2",
    0x0311: "3.1.1",
    0x02FF: "2.???",
}
SIGNING_ENABLED = 0x01
SIGNING_REQUIRED = 0x02
SMB2_MAGIC = b"\xfeSMB"
SMB1_MAGIC = b"\xffSMB"
HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")  # the 64-byte SMB2 header
FILETIME_EPOCH = 11_644_473_600  # seconds from 1601-01-01 to 1970-01-01
MAX_MESSAGE = 64 * 1024


def negotiate_request() -> bytes:
    """NetBIOS session framing + SMB2 header + NEGOTIATE with a SHA-512 pre-auth integrity context."""
    header = HEADER.pack(SMB2_MAGIC, 64, 0, 0, 0, 1, 0, 0, 0, 0xFEFF, 0, 0, bytes(16))
    dialects = struct.pack(f"<{len(DIALECTS)}H", *DIALECTS)
    fixed_size = 36
    context_offset = len(header) + fixed_size + len(dialects)
    padding = -context_offset % 8
    context_offset += padding
    salt = os.urandom(32)
    preauth = struct.pack("<HHH", 1, len(salt), 0x0001) + salt  # one hash (SHA-512), salt
    context = struct.pack("<HHI", 0x0001, len(preauth), 0) + preauth
    body = struct.pack(
        "<HHHHI16sIHH", fixed_size, len(DIALECTS), SIGNING_ENABLED, 0, 0, os.urandom(16), context_offset, 1, 0
    )
    message = header + body + dialects + bytes(padding) + context
    return struct.pack(">I", len(message)) + message


async def read_message(stream: Stream) -> bytes:
    frame = await stream.read_exactly(4)
    if frame[0] != 0:
        raise ProtocolError(f"not a NetBIOS session message: {first_bytes(frame + await stream.more(36))}")
    size = int.from_bytes(frame[1:], "big")
    if size > MAX_MESSAGE:
        raise ProtocolError(f"a {size}-byte SMB message (limit {MAX_MESSAGE}): {first_bytes(frame)}")
    return await stream.read_exactly(size)


def _answer(conv: Conversation, message: bytes, sent: float, received: float) -> Outcome:
    if message[:4] == SMB1_MAGIC:
        conv.note("smb_dialect", "SMB1")
        return conv.ok("SMB1 NEGOTIATE response: the server does not speak SMB2")
    if message[:4] != SMB2_MAGIC or len(message) < HEADER.size + 64:
        raise ProtocolError(first_bytes(message))
    fields = HEADER.unpack_from(message)
    status, command = fields[3], fields[4]
    if command != 0:
        raise ProtocolError(f"SMB2 command {command} in reply to NEGOTIATE")
    if status != 0:
        conv.note("smb_status", f"0x{status:08x}")
        return conv.ok(f"SMB2 NEGOTIATE failed: status 0x{status:08x}")
    size, security, dialect = struct.unpack_from("<HHH", message, HEADER.size)
    if size != 65:
        raise ProtocolError(f"NEGOTIATE response of structure size {size}")
    (system_time,) = struct.unpack_from("<Q", message, HEADER.size + 40)
    name = DIALECT_NAMES.get(dialect, f"0x{dialect:04x}")
    signing = (
        "required" if security & SIGNING_REQUIRED else "enabled" if security & SIGNING_ENABLED else "off"
    )
    conv.note("smb_dialect", name)
    conv.note("smb_signing", signing)
    if system_time:
        skew = system_time / 1e7 - FILETIME_EPOCH - (sent + received) / 2
        conv.note("clock_skew", f"{skew:+.3f}s")
    return conv.ok(f"SMB {name}, signing {signing}")


async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
    """The SMB check."""

    async def body(conv: Conversation) -> Outcome:
        async def talk(stream: Stream) -> Outcome:
            conv.step = "waiting for the NEGOTIATE response"
            sent = time.time()
            await stream.send(negotiate_request())
            message = await read_message(stream)
            return _answer(conv, message, sent, time.time())

        return await connected(conv, resolved, target.port, timeout, attempts, talk)

    return await converse("SMB", deadline(timeout, attempts), body, target.local)
