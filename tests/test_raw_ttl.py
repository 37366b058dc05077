"""The locator's one raw socket (CAP_NET_RAW: these tests run as root, as `make test` does): the kernel
filter keeps only resets and SYN-ACKs, every concurrent measurement gets its own answer's TTL, and the
socket is closed when nobody waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

import pytest

from exporter.probes import locate
from exporter.probes.contract import Resolved
from tests.conftest import Listeners, free_port


def test_the_kernel_filter_keeps_only_resets_and_syn_acks(listeners: Listeners) -> None:
    raw = locate.raw_socket(socket.AF_INET)
    assert raw is not None, "these tests run as root, with CAP_NET_RAW"
    try:
        port = listeners.open("127.0.31.1")
        closed = free_port("127.0.31.1")
        with socket.create_connection(("127.0.31.1", port), timeout=2) as client:
            server, _ = listeners.sockets[-1].accept()
            with server:
                for _ in range(20):
                    client.sendall(b"x" * 100)  # data segments and their ACKs: none may reach the raw socket
                    server.recv(100)
        with contextlib.suppress(ConnectionRefusedError):
            socket.create_connection(("127.0.31.1", closed), timeout=2).close()
        time.sleep(0.2)
        flags = []
        while True:
            try:
                data = raw.recv(256)
            except BlockingIOError:
                break
            header = (data[0] & 0x0F) * 4
            source, dest = struct.unpack_from("!HH", data, header)
            if {source, dest} & {port, closed}:
                flags.append(data[header + 13])
        assert flags, "the SYN-ACK and the reset were not seen"
        assert all(f & 0x04 or f & 0x12 == 0x12 for f in flags), [hex(f) for f in flags]
        assert any(f & 0x04 for f in flags) and any(f & 0x12 == 0x12 for f in flags)
    finally:
        raw.close()


@pytest.mark.parametrize("host", ["127.0.31.2", "::1"])
def test_concurrent_measurements_share_one_socket_and_each_gets_its_answer(
    listeners: Listeners, host: str
) -> None:
    port = listeners.open(host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as spare:
        spare.bind((host, 0))
        closed = int(spare.getsockname()[1])  # nothing listens there once this closes
    target = Resolved(socket.AF_INET6 if ":" in host else socket.AF_INET, host)

    async def measure() -> tuple[list[int | None], int]:
        runs = [locate.received_ttl(target, port if i % 2 else closed, 1.0) for i in range(24)]
        gathered = asyncio.gather(*runs)
        await asyncio.sleep(0)  # every measurement has started and holds the one reader
        open_readers = len(locate._readers)
        return list(await gathered), open_readers

    ttls, readers_while_running = asyncio.run(measure())
    assert ttls == [64] * 24  # loopback: no router in between, Linux's initial TTL
    assert readers_while_running == 1  # one raw socket for all of them
    assert locate._readers == {}  # closed once nobody waits
