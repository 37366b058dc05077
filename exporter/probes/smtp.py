"""SMTP probe (25, 587, 2525, 465, 475, 717): banner, EHLO, STARTTLS when offered, EHLO again, QUIT.

Port 465 on Exchange 2013+ is the Client Proxy connector, plain SMTP with STARTTLS, not implicit TLS, so
every port is spoken to the same way. A 4xx/5xx banner (421 back-pressure, a component switched off) is a
server that answered and refused: OPEN with ("smtp", "refusing: 421 ..."). After STARTTLS the certificate's
expiry, chain and name are recorded as for every TLS probe. Lines are bounded by the reader's limit and a
reply by its line count, so a 10 MB banner costs us a few KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
    Conversation,
    ProtocolError,
    Stream,
    clean,
    connect,
    converse,
    deadline,
    first_bytes,
)
from exporter.probes.outcome import Outcome
from exporter.probes.tls import Trust, start_tls

LINE_LIMIT = 4096  # RFC 5321 allows 512 per reply line; Exchange stays well inside
MAX_REPLY_LINES = 64
QUIT_WAIT = 1.0  # seconds we wait for the 221 to QUIT


async def read_reply(stream: Stream) -> tuple[int, list[str]]:
    """One (possibly multi-line) SMTP reply: its code and its text lines, sanitised."""
    lines: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        raw = await stream.read_line()
        line = raw.rstrip(b"\r\n")
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
            raise ProtocolError(first_bytes(raw))
        lines.append(clean(line[4:]))
        if line[3:4] != b"-":
            return int(line[:3]), lines
    raise ProtocolError(f"a reply of more than {MAX_REPLY_LINES} lines")


def _ehlo_name(stream: Stream) -> str:
    """Our own address as an RFC 5321 address literal: no DNS lookup of our own name, ever."""
    sockname = stream.writer.get_extra_info("sockname")
    try:
        ip = ipaddress.ip_address(sockname[0])
    except (TypeError, ValueError, IndexError):
        return "[127.0.0.1]"
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


async def _command(conv: Conversation, stream: Stream, line: str) -> tuple[int, list[str]]:
    conv.step = f"waiting for the reply to {line.split()[0]}"
    await stream.send(line.encode("ascii") + b"\r\n")
    return await read_reply(stream)


async def _quit(conv: Conversation, stream: Stream) -> None:
    """QUIT and wait a moment for the 221: the verdict is in, a rude or slow goodbye changes nothing."""
    with contextlib.suppress(OSError, EOFError, ProtocolError):
        async with asyncio.timeout(QUIT_WAIT):
            await _command(conv, stream, "QUIT")


async def _greet(conv: Conversation, stream: Stream) -> Stream | Outcome:
    conv.step = "waiting for the banner"
    code, lines = await read_reply(stream)
    conv.note("banner", f"{code} {lines[0]}")
    if code != 220:
        conv.note("smtp", f"refusing: {code} {lines[0]}")
        await _quit(conv, stream)
        return conv.ok(f"{code} {lines[0]}")
    code, lines = await _command(conv, stream, f"EHLO {_ehlo_name(stream)}")
    if code != 250:
        conv.note("smtp", f"EHLO refused: {code} {lines[0]}")
        await _quit(conv, stream)
        return conv.ok(f"EHLO refused: {code} {lines[0]}")
    keywords = [line.split(" ", 1)[0].upper() for line in lines[1:]]
    conv.note("extensions", ",".join(keywords))
    if "STARTTLS" not in keywords:
        conv.note("starttls", "absent")
        return stream
    code, lines = await _command(conv, stream, "STARTTLS")
    conv.note("starttls", "offered" if code == 220 else f"refused: {code} {lines[0]}")
    return stream


def smtp_check(cafile: str | None = None) -> Check:
    """The SMTP check, verifying STARTTLS certificates against `cafile` (or the system store)."""

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        async def body(conv: Conversation) -> Outcome:
            async def greet() -> Stream | Outcome:
                """Connect, banner, EHLO, and STARTTLS when offered. A refusal is the Outcome."""
                stream = await connect(conv, resolved, target.port, timeout, attempts, limit=LINE_LIMIT)
                if isinstance(stream, Outcome):
                    return stream
                return await _greet(conv, stream)

            stream = await greet()
            if isinstance(stream, Outcome):
                return stream
            if conv.detail("starttls") != "offered":
                await _quit(conv, stream)
                return conv.ok(conv.detail("banner") or "")
            secured = await start_tls(conv, stream, greet, target.name or resolved.host, Trust.of(cafile))
            if isinstance(secured, Outcome):
                return secured
            code, lines = await _command(conv, secured, f"EHLO {_ehlo_name(secured)}")
            if code != 250:
                conv.note("smtp", f"EHLO after STARTTLS refused: {code} {lines[0]}")
            await _quit(conv, secured)
            return conv.ok(conv.detail("banner") or "")

        return await converse("SMTP", deadline(timeout, attempts), body, target.local)

    return check


check = smtp_check()
