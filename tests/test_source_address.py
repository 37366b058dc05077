"""--probe.source-address on real loopback sockets: every socket a probe opens comes from that address, and
an address we cannot bind is our local_error, never a network verdict."""

from __future__ import annotations

import asyncio
import socket

import pytest

from exporter.engine.scheduler import Engine
from exporter.probes import locate, registry
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import Outcome, State
from exporter.probes.tcp import probe_tcp
from tests.conftest import Listeners, free_port
from tests.lab.loops import run_on

TARGET = "127.0.62.1"
NOT_OURS = "192.0.2.44"  # TEST-NET-1: no interface of this host has it


class Collect:
    def __init__(self) -> None:
        self.outcomes: dict[int, Outcome] = {}

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        self.outcomes[index] = outcome


def accepted_from(listeners: Listeners, index: int = -1) -> str:
    """The address the listener's oldest waiting connection came from."""
    sock = listeners.sockets[index]
    sock.settimeout(2.0)
    conn, peer = sock.accept()
    conn.close()
    return str(peer[0])


def test_the_engine_connects_from_the_source_address_on_every_loop(
    listeners: Listeners, loop_kind: str
) -> None:
    """uvloop and the selector loop take the add_writer path, the loop without fd callbacks (the
    Proactor's API) the sock_connect task: both bind first."""
    port = listeners.open(TARGET)
    sink = Collect()
    engine = Engine([Target(TARGET, port, local="127.0.62.2")], sink, once=True, timeout=1.0)
    run_on(loop_kind, engine.run())
    assert sink.outcomes[0].state is State.OPEN
    assert accepted_from(listeners) == "127.0.62.2"


def test_an_address_this_host_lacks_is_a_local_error_never_a_block(listeners: Listeners) -> None:
    port = listeners.open(TARGET)
    sink = Collect()
    targets = [
        Target(TARGET, port, local=NOT_OURS),
        Target(TARGET, free_port(TARGET), local=NOT_OURS),  # closed too: the bind fails first
        Target("::1", port, local="127.0.62.2"),  # an IPv4 source for an IPv6 target
    ]
    asyncio.run(Engine(targets, sink, once=True, timeout=1.0).run())
    for index in (0, 1):
        outcome = sink.outcomes[index]
        assert (outcome.state, outcome.evidence) == (
            State.LOCAL_ERROR,
            f"cannot bind to source address {NOT_OURS}: EADDRNOTAVAIL",
        )
    assert (sink.outcomes[2].state, sink.outcomes[2].evidence) == (
        State.LOCAL_ERROR,
        "source address 127.0.62.2 is IPv4, the target is IPv6",
    )


@pytest.mark.all_loops
async def test_the_coroutine_probe_binds_too(listeners: Listeners) -> None:
    port = listeners.open(TARGET)
    outcome = await probe_tcp((TARGET, port), socket.AF_INET, 1.0, local="127.0.62.3")
    assert outcome.state is State.OPEN
    assert accepted_from(listeners) == "127.0.62.3"
    bad = await probe_tcp((TARGET, port), socket.AF_INET, 1.0, local=NOT_OURS)
    assert bad.state is State.LOCAL_ERROR and NOT_OURS in bad.evidence


@pytest.mark.all_loops
async def test_protocol_conversations_connect_from_the_source_address(listeners: Listeners) -> None:
    """A stream check (SMB here; every conversation shares one connect): the listener accepts and says
    nothing, so the check reads open, and the peer it saw is the source address."""
    port = listeners.open(TARGET)
    check = registry.checks()["smb"]
    resolved = Resolved(socket.AF_INET, TARGET)
    outcome = await check(resolved, Target(TARGET, port, "smb", local="127.0.62.4"), 0.5, 1)
    assert outcome.state is State.OPEN
    assert accepted_from(listeners) == "127.0.62.4"
    bad = await check(resolved, Target(TARGET, port, "smb", local=NOT_OURS), 0.5, 1)
    assert (bad.state, bad.evidence) == (
        State.LOCAL_ERROR,
        f"cannot bind to source address {NOT_OURS}: EADDRNOTAVAIL",
    )


@pytest.mark.all_loops
async def test_udp_probes_send_from_the_source_address() -> None:
    """An NTP request to a socket that reads it and never answers: the datagram came from the source
    address (and the silence reads filtered); an address we lack is a local error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((TARGET, 0))
        port = server.getsockname()[1]
        resolved = Resolved(socket.AF_INET, TARGET)
        outcome = await registry.checks()["ntp"](
            resolved, Target(TARGET, port, "ntp", local="127.0.62.5"), 0.2, 1
        )
        assert outcome.state is State.FILTERED
        server.settimeout(1.0)
        _data, sender = server.recvfrom(512)
        assert sender[0] == "127.0.62.5"
        bad = await registry.checks()["ntp"](resolved, Target(TARGET, port, "ntp", local=NOT_OURS), 0.2, 1)
        assert bad.state is State.LOCAL_ERROR and NOT_OURS in bad.evidence


@pytest.mark.skipif(not locate.available(), reason="locating is Linux's")
async def test_the_locator_traces_from_the_source_address(listeners: Listeners) -> None:
    port = listeners.open(TARGET)
    resolved = Resolved(socket.AF_INET, TARGET)
    assert await locate.distance_to(resolved, port, 1.0, 4, local="127.0.62.6") == 1
    assert accepted_from(listeners) == "127.0.62.6"
