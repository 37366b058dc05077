"""Misbehaving peers for the probes' tests: asyncio servers on loopback that break the rules on purpose.

TCP behaviours (each `async def (reader, writer)`):
    flood(size)             sends `size` bytes of one endless line (a 10 MB banner) as fast as it is read
    slowloris(text, gap)    sends `text` one byte every `gap` seconds
    silent                  completes the handshake and never says a word
    silent_until_closed(l)  the same, noting in `l` when the client hung up
    wrong_protocol(banner)  greets with another protocol's banner (SSH by default) and then listens
    garbage_after_hello     waits for the client's first bytes (a TLS ClientHello), answers with garbage
    reset                   accepts and resets at once (SO_LINGER 0)
    scripted(greeting, steps, then)  a tiny line-protocol actor: a greeting, (expected prefix, reply)
                            pairs, then another behaviour (e.g. garbage_after_hello after STARTTLS)
SilentPeers(hosts, ports): the silent behaviour on fixed ports of many hosts, from a thread.
UDP behaviours: udp_garbage, udp_huge (a 65507-byte datagram), udp_silent.

`serve(behaviour, host)` / `serve_udp(behaviour, host)` run one as an async context manager yielding the
port; on exit every connection is aborted. `python -m tests.lab.hostile flood HOST` runs a flood in its
own process (for memory measurements). Only loopback addresses are ever bound here.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import cast

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
UdpBehaviour = Callable[[bytes], bytes | None]

GARBAGE = bytes(range(256)) * 4


def _loopback(host: str) -> None:
    if not host.startswith("127.") and host != "::1":
        raise ValueError(f"{host}: hostile peers only ever listen on loopback")


def flood(size: int = 10 * 1024 * 1024) -> Behaviour:
    async def behave(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"2" * 65536  # one line that never ends: "2222..." looks like a reply code to a lazy parser
        sent = 0
        while sent < size:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        await asyncio.sleep(3600)

    return behave


def slowloris(
    text: bytes = b"220 slow.example ESMTP at one byte a second\r\n", gap: float = 1.0
) -> Behaviour:
    async def behave(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in text:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(gap)
        await asyncio.sleep(3600)

    return behave


async def silent(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


def silent_until_closed(hung_up: list[float]) -> Behaviour:
    """Silent, but notes (monotonic time) when the client hung up."""

    async def behave(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        finally:
            hung_up.append(time.monotonic())

    return behave


def wrong_protocol(banner: bytes = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n") -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        while await reader.read(65536):
            pass

    return behave


async def garbage_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(GARBAGE)
    await writer.drain()
    await asyncio.sleep(3600)


async def reset(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def scripted(
    greeting: bytes, steps: Sequence[tuple[bytes, bytes]], then: Behaviour | None = None
) -> Behaviour:
    """Send `greeting`; for each (prefix, reply): read a line, check it starts with prefix, reply; then
    hand over to `then` (or listen until the client leaves)."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        for prefix, reply in steps:
            line = await reader.readline()
            if not line.upper().startswith(prefix):
                writer.write(b"500 unexpected\r\n")
                await writer.drain()
                return
            writer.write(reply)
            await writer.drain()
        if then is not None:
            await then(reader, writer)
            return
        while await reader.read(65536):
            pass

    return behave


@contextlib.asynccontextmanager
async def serve(behaviour: Behaviour, host: str = "127.0.0.1") -> AsyncIterator[int]:
    _loopback(host)
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        # a cancelled handler task would make asyncio's start_server callback log an error: end quietly
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await behaviour(reader, writer)

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, behaviour: UdpBehaviour) -> None:
        self.behaviour = behaviour
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # selector loops' class is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.received += 1
        reply = self.behaviour(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def udp_garbage(_request: bytes) -> bytes:
    return b"\x17\x00garbage that is no protocol at all" + GARBAGE[:64]


def udp_huge(_request: bytes) -> bytes:
    return b"\xff" * 65507


def udp_silent(_request: bytes) -> None:
    return None


@contextlib.asynccontextmanager
async def serve_udp(behaviour: UdpBehaviour, host: str = "127.0.0.1") -> AsyncIterator[int]:
    _loopback(host)
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.create_datagram_endpoint(
        lambda: _Datagrams(behaviour), local_addr=(host, 0)
    )
    try:
        yield int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


class SilentPeers:
    """Listeners on fixed ports of many loopback hosts that accept every connection and never answer
    (a thread, so a synchronous test can hold them while a separate exporter process probes them).
    Each protocol check against them runs to its deadline: a slow, never-filtered peer."""

    def __init__(self, hosts: Sequence[str], ports: Sequence[int]) -> None:
        for host in hosts:
            _loopback(host)
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        for host in hosts:
            for port in ports:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(1024)
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, "listener")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SilentPeers:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "listener":
                    with contextlib.suppress(OSError):
                        conn, _addr = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ, "conn")
                    continue
                try:
                    data = sock.recv(65536)  # whatever the client says is read and ignored
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the client hung up
                    self._selector.unregister(sock)
                    sock.close()


async def _serve_forever(behaviour: Behaviour, host: str) -> None:
    async with serve(behaviour, host) as port:
        print(port, flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str]) -> None:
    """`python -m tests.lab.hostile flood HOST`: a flood peer in its own process (prints its port), so a
    test can measure the prober's memory without counting the peer's."""
    kind, host = argv
    behaviours: dict[str, Behaviour] = {"flood": flood(), "silent": silent}
    asyncio.run(_serve_forever(behaviours[kind], host))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
