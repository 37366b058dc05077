"""The probe engine against real loopback peers: states, spreading, and our own failures kept apart."""

from __future__ import annotations

import asyncio
import json
import resource
import time
from pathlib import Path

from exporter.engine.scheduler import Engine
from exporter.probes.contract import Target
from exporter.probes.outcome import Outcome, State
from tests.conftest import Listeners, free_port
from tests.lab.check_command import run_check
from tests.lab.organisations import loopback_org


class Collect:
    def __init__(self) -> None:
        self.outcomes: dict[int, Outcome] = {}
        self.times: list[tuple[float, int]] = []

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        self.outcomes[index] = outcome
        self.times.append((time.monotonic(), index))


def test_open_listener_and_closed_port_on_loopback(listeners: Listeners) -> None:
    open_port = listeners.open("127.0.30.1")
    closed_port = free_port("127.0.30.1")
    sink = Collect()
    engine = Engine(
        [Target("127.0.30.1", open_port), Target("127.0.30.1", closed_port), Target("::1", closed_port)],
        sink,
        once=True,
        timeout=1.0,
    )
    asyncio.run(engine.run())
    assert sink.outcomes[0].state is State.OPEN and sink.outcomes[0].evidence == ""
    assert (sink.outcomes[1].state, sink.outcomes[1].evidence) == (State.REFUSED, "ECONNREFUSED")
    assert sink.outcomes[2].state is State.REFUSED
    assert engine.stats.probes["open"] == 1 and engine.stats.probes["refused"] == 2


def test_names_resolve_and_localhost_works(listeners: Listeners) -> None:
    port = listeners.open("127.0.0.1")
    sink = Collect()
    asyncio.run(Engine([Target("localhost", port)], sink, once=True).run())
    assert sink.outcomes[0].state is State.OPEN


def test_probes_are_spread_over_the_interval_not_fired_in_a_burst() -> None:
    n, interval = 120, 1.2
    closed = free_port("127.0.30.2")
    sink = Collect()

    async def one_interval() -> Engine:
        engine = Engine([Target("127.0.30.2", closed)] * n, sink, interval=interval, tick=0.02, timeout=0.5)
        runner = asyncio.ensure_future(engine.run())
        await asyncio.sleep(interval + 0.15)
        engine.stop()
        await runner
        return engine

    asyncio.run(one_interval())
    first_pass: dict[int, float] = {}
    for when, index in sink.times:
        first_pass.setdefault(index, when)
    assert len(first_pass) == n  # every path once in the first interval
    start = min(first_pass.values())
    buckets = [0] * 12  # tenths of the interval
    for when in first_pass.values():
        buckets[min(11, int((when - start) / interval * 10))] += 1
    # an even spread puts ~12 per tenth; a burst would put most of them in one
    assert max(buckets) <= n // 4, buckets


def test_out_of_file_descriptors_is_a_local_error_never_filtered(tmp_path: Path) -> None:
    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    # the concurrency cap is forced far above what 24 fds allow, so sockets cannot be had
    result = run_check(
        loopback_org("127.0.31."),
        tmp_path,
        "--max-concurrency",
        "500",
        "--timeout",
        "1",
        preexec=low_fd_limit,
    )
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    states = {row["state"] for row in rows}
    local = [row for row in rows if row["state"] == "local_error"]
    assert local and all(row["evidence"] == "EMFILE" for row in local)
    assert states <= {"local_error", "refused"} and "filtered" not in states


def test_failed_name_lookup_is_dns_error_not_a_block(tmp_path: Path) -> None:
    """The resolver itself is unreachable (a private resolv.conf in a mount namespace)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.254\noptions timeout:1 attempts:1\n")
    inv = loopback_org("127.0.32.", servers=1)
    inv["servers"][0].pop("address")
    inv["servers"][0]["fqdn"] = "ex1.unresolvable.test"
    wrapper = ["unshare", "--mount", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"]
    result = run_check(inv, tmp_path, "--timeout", "0.5", wrapper=wrapper)
    rows = json.loads(result.stdout)
    ex1 = [row for row in rows if row["target"] == "ex1.unresolvable.test"]
    assert ex1 and {row["state"] for row in ex1} == {"dns_error"}
    assert all(row["evidence"].startswith("EAI_") for row in ex1)
    assert result.returncode == 1


class Confirming(Collect):
    """Like the recorder: True (confirm soon) on a path's first failures after it was open, up to k."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.was_open: set[int] = set()
        self.failures: dict[int, int] = {}
        self.log: list[tuple[int, State]] = []

    def record(self, index: int, outcome: Outcome, wall: float) -> bool:  # type: ignore[override]
        super().record(index, outcome, wall)
        self.log.append((index, outcome.state))
        if outcome.state is State.OPEN:
            self.was_open.add(index)
            self.failures[index] = 0
            return False
        self.failures[index] = self.failures.get(index, 0) + 1
        return index in self.was_open and self.failures[index] < self.k


def test_a_failing_path_brings_its_hosts_other_paths_forward_and_no_other_host(listeners: Listeners) -> None:
    """A host cut off: after its first path fails, its other paths are probed out of schedule, so they all
    turn blocked together (the one host alert then fires with the first port alert, not an interval later).
    The paths of another host keep their schedule."""
    cut_ports = [listeners.open("127.0.30.5") for _ in range(8)]
    kept_ports = [listeners.open("127.0.30.6") for _ in range(8)]
    targets = [Target("127.0.30.5", p) for p in cut_ports] + [Target("127.0.30.6", p) for p in kept_ports]
    sink = Confirming()
    cut = set(range(8))

    async def scenario() -> int:
        engine = Engine(targets, sink, interval=6.0, tick=0.02, timeout=0.5, confirm_delay=0.5)
        runner = asyncio.ensure_future(engine.run())
        while len(sink.was_open) < len(targets):  # a first cycle, every path open
            await asyncio.sleep(0.05)
        mark = len(sink.log)
        for sock in listeners.sockets[:8]:
            sock.close()  # the host's ports now refuse
        while not cut <= {i for i, state in sink.log[mark:] if state is not State.OPEN}:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        engine.stop()
        await runner
        return mark

    mark = asyncio.run(asyncio.wait_for(scenario(), 30))
    after = sink.log[mark:]
    counts: dict[int, int] = {}
    third = None  # where in the log some path of the host failed for the third time
    for position, (index, state) in enumerate(after):
        if index in cut and state is not State.OPEN:
            counts[index] = counts.get(index, 0) + 1
            if counts[index] == 3 and third is None:
                third = position
    firsts = [
        next(p for p, (i, s) in enumerate(after) if i == index and s is not State.OPEN) for index in cut
    ]
    # every port of the cut host failed before any of them was confirmed a third time (0.5 s apart);
    # on its schedule alone the last would fail up to an interval (6 s) after the first
    assert third is None or max(firsts) < third, (firsts, third)
    # the other host's paths were probed on their schedule only: at most once each in that time
    kept = [index for index, _state in after if index not in cut]
    assert all(kept.count(index) <= 2 for index in set(kept)), kept
