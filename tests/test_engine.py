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
