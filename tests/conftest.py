"""Shared fixtures: free ports, loopback listeners, the routed lab with a firewall."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tests.lab.loops import LOOPS
from tests.lab.netns import RoutedLab
from tests.lab.samba import SambaDC, SambaLab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_loops: run the async test on every event loop of tests/lab/loops")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> object:
    """Async tests marked all_loops run once per loop (uvloop, selector, the Proactor stand-in); the
    others on asyncio's default loop, as without this hook (pytest-asyncio wants a mapping for every
    item once the hook exists)."""
    if item.get_closest_marker("all_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return LOOPS


@pytest.fixture(params=list(LOOPS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    """For synchronous tests that run their own loop: each of the three loops in turn."""
    return str(request.param)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Listeners:
    """Real TCP listeners on loopback addresses, closed at teardown."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def open(self, host: str, port: int = 0) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        self.sockets.append(sock)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    group = Listeners()
    yield group
    group.close()


@pytest.fixture(scope="session")
def routed_lab() -> Iterator[RoutedLab]:
    lab = RoutedLab().up()
    lab.listen(8001, 8002, 8003, 8004, 8005, 8006)
    yield lab
    lab.down()


@pytest.fixture
def lab(routed_lab: RoutedLab) -> Iterator[RoutedLab]:
    routed_lab.flush()
    yield routed_lab
    routed_lab.flush()


@pytest.fixture(scope="session")
def samba_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaLab]:
    """A real Samba AD DC with an Exchange organisation loaded, on 127.0.77.1; once per test run."""
    lab = SambaLab(tmp_path_factory.mktemp("samba"))
    try:
        lab.build().start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def relaxed_dc(samba_lab: SambaLab) -> SambaDC:
    return samba_lab.relaxed()
