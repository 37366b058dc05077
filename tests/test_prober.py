"""The prober thread: continuous probing, and a plan swap that keeps what it knew."""

from __future__ import annotations

from exporter.engine.prober import Prober, ProbeSettings
from exporter.inventory.model import Inventory
from exporter.plan.catalogue import PathKind
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import State
from exporter.state.recorder import Recorder
from tests.conftest import Listeners, free_port
from tests.lab.waiting import wait_until


def path(port: int, address: str) -> NetworkPath:
    return NetworkPath(
        "me", "", "t.test", "S", "mailbox", port, "tcp", "smtp", PathKind.EXCHANGE_EXCHANGE, "tcp", address
    )


def test_replacing_the_plan_keeps_results_of_paths_that_stay(listeners: Listeners) -> None:
    open_port = listeners.open("127.0.36.1")
    closed_port = free_port("127.0.36.1")
    inv = Inventory("o")
    recorder = Recorder()
    prober = Prober(
        inv,
        [path(open_port, "127.0.36.1"), path(closed_port, "127.0.36.1")],
        ProbeSettings(interval=0.5, timeout=0.3),
        source="me",
        sink=recorder,
    )
    prober.start()
    try:
        wait_until(lambda: recorder.ready, timeout=10, interval=0.02)
        probes_before = sum(prober.stats.probes.values())
        new_port = listeners.open("127.0.36.2")
        prober.replace_plan(inv, [path(open_port, "127.0.36.1"), path(new_port, "127.0.36.2")])
        kept = recorder.table.results()[0]
        assert kept is not None and kept.outcome.state is State.OPEN
        assert [p.port for p in recorder.table.paths] == [open_port, new_port]
        wait_until(lambda: recorder.ready, timeout=10, interval=0.02)
        result = recorder.table.results()[1]
        assert result is not None and result.outcome.state is State.OPEN
        assert sum(prober.stats.probes.values()) >= probes_before  # counters never go back
        assert prober.plan_changes == 1
    finally:
        prober.stop()
    assert prober._thread is not None and not prober._thread.is_alive()
