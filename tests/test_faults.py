"""Fault injection with real processes: the monitor must neither page falsely nor go silent.

SIGKILL and restart, wall-clock jumps (libfaketime), running out of file descriptors at run time, a 10x
inventory at run time, a directory outage, and a baseline that cannot be written.
"""

from __future__ import annotations

import glob
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Listeners
from tests.lab import samba
from tests.lab.hostile import SilentPeers
from tests.lab.metrics import samples, value
from tests.lab.netns import RoutedLab
from tests.lab.organisations import EX1_PORTS, loopback_org, routed_lab_org
from tests.lab.samba import LAB_IP, SambaLab
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]


def spawn(args: list[str], *, env: dict[str, str] | None = None, wrapper: list[str] | None = None) -> Service:
    """The service, answering /-/healthy (ready may wait for a first pass this test wants to watch)."""
    return start_service(args, env=env, wrapper=wrapper, ready="/-/healthy")


def stop(svc: Service) -> None:
    svc.stop()


# ---- SIGKILL and restart ---------------------------------------------------------------------------


@pytest.fixture
def lab_file(routed_lab: RoutedLab, tmp_path: Path) -> Iterator[tuple[RoutedLab, Path]]:
    routed_lab.flush()
    routed_lab.listen(*EX1_PORTS)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(routed_lab_org(routed_lab)))
    yield routed_lab, file
    routed_lab.flush()
    for listener in routed_lab.listeners[1:]:
        listener.kill()
        listener.wait(5)
    del routed_lab.listeners[1:]


@pytest.mark.netns
def test_sigkill_loses_no_baseline_and_a_block_pages_only_once(
    lab_file: tuple[RoutedLab, Path], tmp_path: Path
) -> None:
    lab, file = lab_file
    state = tmp_path / "state.sqlite"
    args = serve_args(
        file, source="monitor.test", interval=3, timeout=0.3, confirm_delay=0.3, state_file=state
    )
    first = spawn(args)
    try:
        wait_until(lambda: value(first, "exchange_path_blocked", port="2525") == 0.0)
        lab.block("tcp dport 2525 drop")
        wait_until(lambda: value(first, "exchange_path_newly_blocked", port="2525") == 1.0)
        time.sleep(6)  # past the baseline's flush interval: this block is on disk
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        stop(first)
    second = spawn(args)
    try:
        # from the very first scrape, before this process probed anything: still blocked, still "new"
        assert value(second, "exchange_path_newly_blocked", port="2525") == 1.0
        assert value(second, "exchange_path_blocked", port="2525") == 1.0
        wait_until(lambda: value(second, "exchange_path_up", port="2525") == 0.0)  # probed again
        time.sleep(4)
        assert value(second, "exchange_path_newly_blocked", port="2525") == 1.0
        # no second transition: the page Alertmanager already sent is the same alert, not a new one
        assert not any(samples(second, "exchange_path_changes_total").values())
        history = second.get("/api/v1/changes").json()
        assert [(c["from_status"], c["to_status"]) for c in history] == [("open", "blocked")]
        lab.flush()
        wait_until(lambda: value(second, "exchange_path_newly_blocked", port="2525") == 0.0)
        assert value(second, "exchange_path_changes_total", **{"from": "blocked", "to": "open"}) == 1.0
    finally:
        stop(second)


# ---- the wall clock jumps ----------------------------------------------------------------------------


def libfaketime() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        raise RuntimeError("libfaketime is missing: `make test` installs Debian's faketime package")
    return found[0]


def test_wall_clock_jumps_cause_no_transitions_and_no_pages(tmp_path: Path, listeners: Listeners) -> None:
    org = loopback_org("127.0.43.", servers=1)
    org["domain_controllers"] = []
    for port in EX1_PORTS:
        listeners.open("127.0.43.1", port)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(org))
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    env = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # only the wall clock jumps, as with a bad NTP step
    }
    svc = spawn(
        serve_args(
            file, source="o", interval=1, timeout=0.3, confirm_delay=0.3, state_file=tmp_path / "state.sqlite"
        ),
        env=env,
    )
    try:
        wait_until(lambda: value(svc, "exchange_path_blocked", port="2525") == 0.0)
        before = value(svc, "exchange_path_last_probe_timestamp_seconds", port="2525") or 0
        for offset in ("+1d", "-1d", "+0"):
            clock.write_text(f"{offset}\n")
            time.sleep(4)
            stamps = samples(svc, "exchange_path_last_probe_timestamp_seconds")
            assert stamps, offset
            if offset == "+1d":
                assert min(stamps.values()) > before + 80_000  # the process really saw the jump
        assert not any(samples(svc, "exchange_path_changes_total").values())
        assert not any(samples(svc, "exchange_path_newly_blocked").values())
        assert not any(samples(svc, "exchange_path_blocked").values())
        assert svc.get("/api/v1/changes").json() == []
        assert (value(svc, "exchange_probe_lag_seconds") or 0) < 1.0  # schedules run on the monotonic clock
    finally:
        stop(svc)


# ---- out of file descriptors at run time -------------------------------------------------------------


def test_fd_exhaustion_at_run_time_is_local_error_and_never_blocks(
    tmp_path: Path, listeners: Listeners
) -> None:
    org = loopback_org("127.0.44.", servers=3)
    for port in EX1_PORTS:
        listeners.open("127.0.44.1", port)  # ex1 open, ex2/ex3/dc refused
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(org))
    svc = spawn(
        serve_args(
            file,
            source="o",
            interval=1,
            timeout=0.3,
            max_concurrency=500,
            state_file=tmp_path / "state.sqlite",
        )
    )
    try:
        wait_until(lambda: svc.get("/-/ready").status_code == 200)
        # ex2's ports refuse (nothing listens there): after hysteresis they read not listening
        wait_until(
            lambda: value(svc, "exchange_path_not_listening", target="ex2.loop.test", port="25") == 1.0
        )
        open_before = value(svc, "exchange_probes_total", result="open") or 0
        subprocess.run(["prlimit", "--pid", str(svc.proc.pid), "--nofile=24:"], check=True)
        time.sleep(5)  # several intervals without sockets (our API may not answer meanwhile either)
        subprocess.run(["prlimit", "--pid", str(svc.proc.pid), "--nofile=4096:"], check=True)
        wait_until(lambda: (value(svc, "exchange_probes_total", result="open") or 0) > open_before + 20)
        assert (value(svc, "exchange_probes_total", result="local_error") or 0) > 0  # it did happen
        assert (value(svc, "exchange_probes_total", result="filtered") or 0) == 0  # never read as a drop
        # an open path never became blocked (refused ones reading "not listening" is their own story)
        assert value(svc, "exchange_path_changes_total", **{"from": "open", "to": "blocked"}) == 0.0
        ex1 = [r for r in svc.get("/api/v1/paths", params={"target": "ex1.loop.test"}).json()]
        assert ex1 and all(r["status"] == "open" for r in ex1)  # open paths never turned blocked
    finally:
        stop(svc)


# ---- ten times the inventory at run time ---------------------------------------------------------------


def org_of(servers: int) -> dict[str, object]:
    return {**loopback_org("127.0.45.", servers=servers), "domain_controllers": []}


def test_ten_times_the_inventory_at_run_time_raises_the_lag_and_nothing_is_misread(tmp_path: Path) -> None:
    """Every server accepts and never answers, so each protocol check holds a probe slot until its deadline
    (0.7 s). Three slots keep up with one server's 14 paths every 5 s; ten servers are several times what
    they can do: the lag must rise, be reported, and fall again, while every path stays open."""
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(org_of(1)))
    hosts = [f"127.0.45.{i}" for i in range(1, 11)]
    with SilentPeers(hosts, EX1_PORTS):
        svc = spawn(
            serve_args(
                file,
                source="o",
                interval=5,
                timeout=0.2,
                attempts=1,
                max_concurrency=3,
                inventory_reload_interval=0.5,
                state_file="",
            )
        )
        try:
            wait_until(lambda: svc.get("/-/ready").status_code == 200)
            small = svc.get("/api/v1/paths").json()
            assert len(small) == len(EX1_PORTS)
            wait_until(lambda: (value(svc, "exchange_probe_cycles_total") or 0) >= 2, timeout=30)
            calm = 0.0
            for _ in range(8):
                calm = max(calm, value(svc, "exchange_probe_lag_seconds") or 0)
                time.sleep(0.5)
            assert calm < 2.0, f"one server's plan should fit three slots; lag {calm}"

            file.write_text(yaml.safe_dump(org_of(10)))  # ten times the inventory, at run time
            wait_until(lambda: len(svc.get("/api/v1/paths").json()) == 10 * len(EX1_PORTS))
            assert value(svc, "exchange_inventory_reloads_total", result="ok") == 1.0
            saturated: list[float] = []

            def lagging() -> bool:
                saturated.append(value(svc, "exchange_probes_in_flight") or 0)
                return (value(svc, "exchange_probe_lag_seconds") or 0) > 10.0

            wait_until(lagging, timeout=60, interval=0.5)  # rises past two intervals, and the metric says so
            assert max(saturated) == 3.0  # every slot busy: the cap, not the network, is the limit
            rows = svc.get("/api/v1/paths").json()
            probed = [r for r in rows if r["state"] is not None]
            assert probed and {r["state"] for r in probed} == {"open"}  # slow peers are open, not filtered
            assert not value(svc, "exchange_probes_total", result="filtered")
            assert not value(svc, "exchange_probes_total", result="local_error")
            assert not value(svc, "exchange_path_changes_total", **{"from": "open", "to": "blocked"})

            file.write_text(yaml.safe_dump(org_of(1)))  # back to one server: the lag drains
            wait_until(lambda: len(svc.get("/api/v1/paths").json()) == len(EX1_PORTS))
            wait_until(
                lambda: (value(svc, "exchange_probe_lag_seconds") or 0) < 2.0, timeout=60, interval=0.5
            )

            file.write_text("organisation: [broken\n")  # an editing mistake keeps the running plan
            wait_until(lambda: value(svc, "exchange_inventory_reloads_total", result="error") == 1.0)
            assert value(svc, "exchange_inventory_file_valid") == 0.0
            assert len(svc.get("/api/v1/paths").json()) == len(EX1_PORTS)
        finally:
            stop(svc)


# ---- the directory goes away ------------------------------------------------------------------------------


def test_directory_outage_keeps_the_inventory_and_flags_it_stale(samba_lab: SambaLab, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {LAB_IP}\noptions timeout:1 attempts:1\n")
    wrapper = ["unshare", "--mount", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"]
    svc = spawn(
        serve_args(
            None,
            ldap_url=f"ldaps://{LAB_IP}",
            bind_user=samba.ADMIN_UPN,
            ca_file=samba_lab.certificates.ca,
            source="monitor.lab.example.test",
            interval=2,
            timeout=0.3,
            discovery_interval=1,
            ldap_timeout=2,
            state_file="",
        ),
        env={"EXFW_BIND_PASSWORD": samba.ADMIN_PASSWORD},
        wrapper=wrapper,
    )
    assert samba_lab.dc is not None
    try:
        wait_until(lambda: value(svc, "exchange_inventory_stale") == 0.0)
        targets = {r["target"] for r in svc.get("/api/v1/paths").json()}
        samba_lab.dc.stop()
        try:
            wait_until(lambda: value(svc, "exchange_inventory_stale") == 1.0, timeout=30)
            time.sleep(3)  # a long outage in compressed time: many failed refreshes
            assert (value(svc, "exchange_discovery_errors_total", reason="connect") or 0) >= 3
            assert {r["target"] for r in svc.get("/api/v1/paths").json()} == targets  # nothing dropped
            # the only blocks are to the DC that really went down, never elsewhere
            blocked = {r["target"] for r in svc.get("/api/v1/paths").json() if r["blocked"]}
            assert blocked <= {"dc1.lab.example.test"}
        finally:
            samba_lab.dc.start()
        wait_until(lambda: value(svc, "exchange_inventory_stale") == 0.0, timeout=30)
    finally:
        stop(svc)


# ---- the baseline cannot be written ----------------------------------------------------------------------


def test_unwritable_baseline_is_a_metric_and_probing_goes_on(tmp_path: Path, listeners: Listeners) -> None:
    org = loopback_org("127.0.46.", servers=1)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(org))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be\n")
    svc = start_service(
        serve_args(file, source="o", interval=1, timeout=0.3, state_file=blocker / "state.sqlite")
    )
    try:
        assert value(svc, "exchange_state_store_healthy") == 0.0
        first = value(svc, "exchange_probes_total", result="refused") or 0
        wait_until(lambda: (value(svc, "exchange_probes_total", result="refused") or 0) > first)
        assert svc.get("/api/v1/verdict").status_code == 200
    finally:
        stop(svc)
