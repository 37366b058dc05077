"""The prober thread: continuous probing, and a plan swap that keeps what it knew."""

from __future__ import annotations

import time
from collections.abc import Callable

from exporter.inventory.model import Inventory
from exporter.plan.catalogue import PathKind
from exporter.plan.planner import Path
from exporter.prober import Prober, ProbeSettings
from exporter.probes.outcome import State
from tests.conftest import Listeners, free_port


def path(port: int, address: str) -> Path:
    return Path(
        "me", "", "t.test", "S", "mailbox", port, "tcp", "smtp", PathKind.EXCHANGE_EXCHANGE, "tcp", address
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_replacing_the_plan_keeps_results_of_paths_that_stay(listeners: Listeners) -> None:
    open_port = listeners.open("127.0.36.1")
    closed_port = free_port("127.0.36.1")
    inv = Inventory("o")
    prober = Prober(
        inv,
        [path(open_port, "127.0.36.1"), path(closed_port, "127.0.36.1")],
        ProbeSettings(interval=0.5, timeout=0.3),
        source="me",
    )
    prober.start()
    try:
        wait_for(lambda: prober.ready)
        probes_before = sum(prober.stats.probes.values())
        new_port = listeners.open("127.0.36.2")
        prober.replace_plan(inv, [path(open_port, "127.0.36.1"), path(new_port, "127.0.36.2")])
        kept = prober.table.results()[0]
        assert kept is not None and kept.outcome.state is State.OPEN
        assert [p.port for p in prober.table.paths] == [open_port, new_port]
        wait_for(lambda: prober.ready)
        result = prober.table.results()[1]
        assert result is not None and result.outcome.state is State.OPEN
        assert sum(prober.stats.probes.values()) >= probes_before  # counters never go back
        assert prober.plan_changes == 1
    finally:
        prober.stop()
    assert prober._thread is not None and not prober._thread.is_alive()
