"""What every protocol probe shares: the one deadline, the classified TCP connect, bounded reads, sanitised
peer text, and the single place where a conversation's end becomes an Outcome (TLS is in `tls`).

The state rule for protocol probes:
- a network verdict (REFUSED, FILTERED, UNREACHABLE) comes only from the network: the TCP handshake's errno
  or silence, or an ICMP error on a connected UDP socket (see `udp`);
- once the handshake completed (or a datagram came back) the path is OPEN, whatever the peer then says.
  How the conversation went is the detail ("protocol", ...): "ok" (it spoke the protocol), "bad" (it spoke
  something else, or TLS failed), "silent" (nothing complete before the deadline), "closed" (it hung up
  or reset mid-conversation); the evidence says exactly what happened;
- our own trouble (no fds, a bug) is LOCAL_ERROR, never a block.
`rtt` of a stream probe is the TCP handshake time (comparable with the plain `tcp` check).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from exporter.probes import bind, tcp
from exporter.probes.contract import Resolved
from exporter.probes.outcome import Outcome, State, classify_errno, errno_name, os_error_code

#: the most any probe buffers from one peer (a line, a message, a body); StreamReader pauses at 2x this
MAX_READ = 64 * 1024
#: the longest peer-supplied string that goes into evidence or a detail
TEXT_LIMIT = 200
#: extra time, past `timeout * attempts`, for a conversation that connected on its last attempt
DEADLINE_SLACK = 0.5


def deadline(timeout: float, attempts: int) -> float:
    """One probe's whole budget; the engine allows a second more before it calls the probe hung."""
    return timeout * attempts + DEADLINE_SLACK


def clean(text: str | bytes, limit: int = TEXT_LIMIT) -> str:
    """Peer text made safe for evidence and details: printable ASCII only, at most `limit` characters."""
    if isinstance(text, bytes):
        text = text[: limit + 1].decode("latin-1")
    kept = "".join(ch if " " <= ch <= "~" else "?" for ch in text[: limit + 1])
    return kept if len(kept) <= limit else kept[: limit - 3] + "..."


def first_bytes(data: bytes, limit: int = 40) -> str:
    """`b'SSH-2.0-...'` for evidence about a peer that spoke something unexpected."""
    shown = repr(data[:limit]) + ("..." if len(data) > limit else "")
    return clean(shown)


def parent_zone(fqdn: str) -> str:
    """`dc1.contoso.com` -> `contoso.com`: the domain a host's name sits in."""
    labels = [label for label in fqdn.strip().rstrip(".").split(".") if label]
    return ".".join(labels[1:]) if len(labels) > 1 else ""


class ProtocolError(Exception):
    """The peer answered, but not in the protocol we asked for. The message is already sanitised."""


def tls_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, for evidence (here, not in `tls`, because `converse` reports it too)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return clean(exc.verify_message)
    return clean(exc.reason or str(exc))


class Conversation:
    """What one probe has learnt so far, and how to turn the way it ended into an Outcome."""

    def __init__(self, protocol: str, local: str = "") -> None:
        self.protocol = protocol
        self.local = local  # the source address every socket of this probe binds to ("" any)
        self.step = "connecting"
        self.answered = False  # the transport answered: handshake done or a datagram back
        self.rtt: float | None = None
        self.attempts = 1
        self.cert_expiry: float | None = None
        self.healthy: bool | None = None  # a health page's own verdict, when the protocol has one
        self.endpoints: tuple[tuple[str, int], ...] = ()  # what an RPC endpoint mapper registered
        self._details: dict[str, str] = {}
        self._streams: list[Stream] = []

    def track(self, stream: Stream) -> Stream:
        """Streams opened for this probe; all are aborted when the conversation ends, however it ends."""
        self._streams.append(stream)
        return stream

    def close(self) -> None:
        for stream in self._streams:
            stream.abort()

    def note(self, key: str, value: str | bytes) -> None:
        self._details[key] = clean(value)

    def detail(self, key: str) -> str | None:
        return self._details.get(key)

    def end(self, state: State, evidence: str, verdict: str | None) -> Outcome:
        details = dict(self._details)
        if verdict is not None:
            details["protocol"] = verdict
        spoke = None if verdict is None else verdict == "ok" and self.healthy is not False
        return Outcome(
            state,
            self.rtt,
            clean(evidence),
            self.attempts,
            tuple(details.items()),
            self.cert_expiry,
            spoke,
            endpoints=self.endpoints if spoke else (),
        )

    def ok(self, evidence: str) -> Outcome:
        return self.end(State.OPEN, evidence, "ok")

    def bad(self, evidence: str) -> Outcome:
        return self.end(State.OPEN, evidence, "bad")


async def converse(
    protocol: str,
    budget: float,
    body: Callable[[Conversation], Awaitable[Outcome]],
    local: str = "",
) -> Outcome:
    """Run one probe's conversation under its deadline, its sockets bound to the source address `local`
    (the target's `local`); whatever happens, return an Outcome, and leave no connection open.
    Cancellation from outside (the engine stopping) is the only thing that propagates."""
    conv = Conversation(protocol, local)
    try:
        return await _converse(conv, budget, body)
    finally:
        conv.close()


async def _converse(
    conv: Conversation, budget: float, body: Callable[[Conversation], Awaitable[Outcome]]
) -> Outcome:
    protocol = conv.protocol
    try:
        async with asyncio.timeout(budget):
            return await body(conv)
    except TimeoutError:
        if conv.answered:
            return conv.end(
                State.OPEN,
                f"{protocol} peer gave no complete answer within {budget:g}s ({conv.step})",
                "silent",
            )
        return Outcome(State.FILTERED, budget, f"no answer within {budget:g}s ({conv.step})", conv.attempts)
    except ProtocolError as exc:
        return conv.bad(f"not {protocol}: {exc}")
    except asyncio.IncompleteReadError as exc:
        got = f"after {len(exc.partial)} bytes" if exc.partial else "before answering"
        return conv.end(State.OPEN, f"{protocol} peer closed the connection {got} ({conv.step})", "closed")
    except ssl.SSLError as exc:
        return conv.bad(f"TLS failed ({conv.step}): {tls_reason(exc)}")
    except bind.BindError as exc:  # a source address we lack: ours, whatever its errno
        return Outcome(State.LOCAL_ERROR, conv.rtt, str(exc.strerror), conv.attempts)
    except OSError as exc:
        code = os_error_code(exc)
        if conv.answered:
            return conv.end(State.OPEN, f"{errno_name(code)} after connect ({conv.step})", "closed")
        return Outcome(classify_errno(code), conv.rtt, errno_name(code), conv.attempts)
    except Exception as exc:  # a bug or a parser we did not expect to fail: ours, never the network's
        return Outcome(State.LOCAL_ERROR, conv.rtt, clean(f"probe failed: {type(exc).__name__}: {exc}"))


# ---- TCP --------------------------------------------------------------------------------------------


def sockaddr(resolved: Resolved, port: int) -> tcp.SockAddr:
    if resolved.family == socket.AF_INET6:
        return (resolved.host, port, 0, 0)
    return (resolved.host, port)


class Stream:
    """A connected TCP (later maybe TLS) stream with reads that never buffer more than MAX_READ."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int = MAX_READ
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limit = limit

    async def read_exactly(self, size: int) -> bytes:
        if size > MAX_READ:
            raise ProtocolError(f"announced a {size}-byte message (limit {MAX_READ})")
        return await self.reader.readexactly(size)

    async def read_some(self, size: int = 16384) -> bytes:
        return await self.reader.read(min(size, MAX_READ))

    async def more(self, size: int = 38, wait: float = 0.05) -> bytes:
        """What else the peer sent right away, for evidence about a bad answer; never waits long."""
        with contextlib.suppress(TimeoutError, OSError, EOFError):
            async with asyncio.timeout(wait):
                return await self.reader.read(size)
        return b""

    async def read_line(self) -> bytes:
        """One line ending in LF; a longer line than the reader's limit is the peer's fault."""
        try:
            return await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            head = await self.reader.read(40)  # already buffered: returns at once
            raise ProtocolError(f"no end of line within {self.limit} bytes: {first_bytes(head)}") from None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def abort(self) -> None:
        """Close now, without waiting on the peer (a hostile peer must not hold us in a TLS shutdown)."""
        self.writer.transport.abort()

    def peer_certificate(self) -> bytes | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            return None
        return ssl_object.getpeercert(binary_form=True)

    def tls_version(self) -> str:
        ssl_object = self.writer.get_extra_info("ssl_object")
        version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) else None
        return version or ""


async def connect(
    conv: Conversation, resolved: Resolved, port: int, timeout: float, attempts: int, limit: int = MAX_READ
) -> Stream | Outcome:
    """TCP connect with the same verdicts as the plain `tcp` check: silence is FILTERED only after
    `attempts` tries of `timeout` each; an errno is classified. Returns the stream or the verdict."""
    loop = asyncio.get_running_loop()
    address = sockaddr(resolved, port)
    conv.step = "connecting"
    for attempt in range(1, attempts + 1):
        conv.attempts = attempt
        try:
            sock = tcp.open_socket(resolved.family, conv.local)
        except OSError as exc:  # no fds, a source address we lack: ours
            return Outcome(State.LOCAL_ERROR, None, bind.evidence(exc), attempt)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
        except TimeoutError:
            sock.close()
            continue
        except OSError as exc:
            sock.close()
            code = os_error_code(exc)
            return Outcome(classify_errno(code), time.monotonic() - started, errno_name(code), attempt)
        except BaseException:
            sock.close()
            raise
        conv.rtt = time.monotonic() - started
        conv.answered = True
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except BaseException:
            sock.close()
            raise
        return conv.track(Stream(reader, writer, limit))
    return tcp.filtered(timeout, attempts)


async def connected(
    conv: Conversation,
    resolved: Resolved,
    port: int,
    timeout: float,
    attempts: int,
    talk: Callable[[Stream], Awaitable[Outcome]],
    limit: int = MAX_READ,
) -> Outcome:
    """Connect, then run `talk` on the stream (which `converse` closes afterwards)."""
    stream = await connect(conv, resolved, port, timeout, attempts, limit)
    if isinstance(stream, Outcome):
        return stream
    return await talk(stream)
