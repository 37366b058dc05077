"""The built-in demo organisation: real listeners on 127.0.0.0/8 standing in for two AD sites, and its mesh.

Four Exchange servers (2016, 2019, 2019, SE) and two domain controllers, each on its own loopback address,
listening on every TCP port any demo agent's plan probes, except one required port left closed on purpose
(SE's Transport port 2525: its host refuses it, nothing listens, no firewall). Five agents probe them in one
process: the observer (monitor.demo.example) and one per Exchange server, each probing from that server's
own loopback address (--probe.source-address), so the matrix shows what "pairwise" means: one row per
agent. A minute in, a firewall change: EX19B's Transport listener (2525) starts dropping every packet from
EX16A's address (a classic BPF socket filter, Linux, no privileges), so EX16A -> EX19B:2525 turns filtered
and *newly blocked*, while EX19A -> EX19B:2525 and EX19B -> EX16A stay open: one asymmetric block, the kind
only a mesh sees (the observer's own row stays open too). Elsewhere the demo says its block is not available.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import threading
from collections.abc import Iterable
from typing import Any

from exporter.inventory.model import DomainController, Inventory, Role, Server, Version
from exporter.plan.planner import NetworkPath
from exporter.probes import bpf

log = logging.getLogger(__name__)

DEMO_SOURCE = "monitor.demo.example"
#: the one required port the demo leaves closed, as (address, port)
CLOSED = ("127.0.10.14", 2525)
#: the listener (EX19B's Transport port, a required Exchange-to-Exchange path) that starts dropping every
#: packet from BLOCKED_SOURCE (EX16A's address) after BREAK_AFTER seconds: a newly blocked, one-way path
BLOCKED = ("127.0.10.13", 2525)
BLOCKED_SOURCE = "127.0.10.11"
BREAK_AFTER = 60.0


def demo_inventory() -> Inventory:
    mbx = frozenset({Role.MAILBOX})
    return Inventory(
        organisation="Demo Organisation",
        servers=(
            Server(
                "EX16A",
                "ex16a.demo.example",
                mbx,
                Version.parse("15.1.2507.6"),
                "Site-A",
                address="127.0.10.11",
                dag="DAG-A",
            ),
            Server(
                "EX19A",
                "ex19a.demo.example",
                mbx,
                Version.parse("15.2.1544.4"),
                "Site-A",
                address="127.0.10.12",
                dag="DAG-A",
            ),
            Server(
                "EX19B", "ex19b.demo.example", mbx, Version.parse("2019"), "Site-B", address="127.0.10.13"
            ),
            Server(
                "EXSE",
                "exse.demo.example",
                mbx,
                Version.parse("15.2.2562.17"),
                "Site-B",
                address="127.0.10.14",
            ),
        ),
        domain_controllers=(
            DomainController("DC1", "dc1.demo.example", "Site-A", global_catalog=True, address="127.0.10.21"),
            DomainController("DC2", "dc2.demo.example", "Site-B", global_catalog=True, address="127.0.10.22"),
        ),
        source="demo",
    )


def mesh_members() -> list[tuple[str, str]]:
    """(FQDN, address) of each demo Exchange server: each runs an agent of its own in the demo."""
    return [(server.fqdn, server.address or "") for server in demo_inventory().servers]


def drop_packets_from(sock: Any, source: str) -> None:
    """Attach a classic BPF filter to `sock` (a listening IPv4 TCP socket) that drops every packet from
    `source`: its SYNs go unanswered, as behind a firewall's drop rule; everyone else connects. Linux only,
    no privileges; raises OSError elsewhere."""
    bpf.attach(sock, bpf.drop_source(int(ipaddress.IPv4Address(source))))


class DemoListeners:
    """TCP listeners for the demo's planned paths, on a thread of their own; after `break_after` seconds
    the BLOCKED listener drops BLOCKED_SOURCE's packets."""

    def __init__(self, paths: Iterable[NetworkPath], break_after: float | None = None) -> None:
        self.endpoints = sorted(
            {(p.address or p.target, p.port) for p in paths if p.proto == "tcp"} - {CLOSED}
        )
        self.break_after = break_after
        self._by_endpoint: dict[tuple[str, int], asyncio.Server] = {}
        self.failed: list[tuple[str, int, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._open())
            ready.set()
            loop.run_forever()
            for server in self._servers:
                server.close()
            loop.close()

        self._thread = threading.Thread(target=main, name="demo-listeners", daemon=True)
        self._thread.start()
        ready.wait(10.0)
        for host, port, why in self.failed:
            log.warning("demo: cannot listen on %s:%d (%s); that path will not read open", host, port, why)

    async def _open(self) -> None:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        for host, port in self.endpoints:
            try:
                server = await asyncio.start_server(accept, host, port, reuse_address=True)
                self._servers.append(server)
                self._by_endpoint[(host, port)] = server
            except OSError as exc:
                hint = "ports below 1024 need root" if exc.errno == errno.EACCES else (exc.strerror or "")
                self.failed.append((host, port, hint))

        if self.break_after is not None and BLOCKED in self._by_endpoint:
            if bpf.SO_ATTACH_FILTER is None:
                log.warning(
                    "demo: the firewall change (%s dropped at %s:%d) is not available on this platform "
                    "(it needs Linux's SO_ATTACH_FILTER): no path will turn newly blocked",
                    BLOCKED_SOURCE,
                    *BLOCKED,
                )
            else:
                asyncio.get_running_loop().call_later(self.break_after, self._break)

    def _break(self) -> None:
        try:
            for sock in self._by_endpoint[BLOCKED].sockets:
                drop_packets_from(sock, BLOCKED_SOURCE)
        except OSError as exc:
            log.warning("demo: cannot drop %s's packets at %s:%d (%s)", BLOCKED_SOURCE, *BLOCKED, exc)
            return
        log.warning(
            "demo: %s:%d now drops every packet from %s (EX16A), as a firewall change would: "
            "EX16A -> EX19B:%d turns filtered, every other source still connects",
            *BLOCKED,
            BLOCKED_SOURCE,
            BLOCKED[1],
        )

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)


class DemoSource:
    """The demo organisation as an inventory source: read once, never changes."""

    kind = "demo"
    interval = 0.0

    def changed(self) -> bool:
        return False

    def read(self) -> Inventory:
        return demo_inventory()
