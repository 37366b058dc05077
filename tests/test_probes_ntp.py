"""The NTP probe against chronyd (synchronised and not) and against servers that answer wrongly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.probes import ntp
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import Outcome, State
from tests.lab import hostile

SYNCED, UNSYNCED = "127.0.79.1", "127.0.79.2"  # in 127.0.0.0/8: routed to lo without an alias
TIMEOUT, ATTEMPTS = 0.5, 2


def chronyd(directory: Path, address: str, local_stratum: int | None) -> subprocess.Popen[bytes]:
    """A real chronyd serving NTP on `address`:123 that never touches the clock (-x) nor the network."""
    conf = directory / f"chrony-{address}.conf"
    lines = [
        f"bindaddress {address}",
        "port 123",
        "cmdport 0",
        "allow 127.0.0.0/8",
        f"pidfile {directory}/{address}.pid",
    ]
    if local_stratum is not None:
        lines.append(f"local stratum {local_stratum}")
    conf.write_text("\n".join(lines) + "\n")
    log = (directory / f"chrony-{address}.log").open("wb")
    process = subprocess.Popen(["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)], stdout=log, stderr=log)
    log.close()
    return process


def _answers(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.connect((address, 123))
        try:
            sock.send(b"\x23" + bytes(47))
            return len(sock.recv(512)) >= 48
        except OSError:
            return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if shutil.which("chronyd") is None:
        raise RuntimeError("the NTP tests need chronyd: apt-get install chrony")
    if os.geteuid() != 0:
        raise RuntimeError("the NTP tests need root (chronyd on port 123)")
    directory = tmp_path_factory.mktemp("chrony")
    processes = [chronyd(directory, SYNCED, 8), chronyd(directory, UNSYNCED, None)]
    try:
        deadline = time.monotonic() + 10
        while not (_answers(SYNCED) and _answers(UNSYNCED)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(
                    f"chronyd did not start: {(directory / f'chrony-{SYNCED}.log').read_text()}"
                )
            time.sleep(0.05)
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(10)


def details(outcome: Outcome) -> dict[str, str]:
    return dict(outcome.details)


async def test_synchronised_server_reports_stratum_and_offset(servers: None) -> None:
    outcome = await ntp.check(Resolved(socket.AF_INET, SYNCED), Target(SYNCED, 123, "ntp"), TIMEOUT, ATTEMPTS)
    got = details(outcome)
    assert outcome.state is State.OPEN and outcome.evidence.startswith("NTP stratum 8, offset ")
    assert (got["stratum"], got["leap"], got["ntp"], got["protocol"]) == ("8", "0", "synchronised", "ok")
    assert abs(float(got["ntp_offset"].rstrip("s"))) < 0.05  # the same clock on both ends


async def test_unsynchronised_server_is_open_and_says_so(servers: None) -> None:
    outcome = await ntp.check(
        Resolved(socket.AF_INET, UNSYNCED), Target(UNSYNCED, 123, "ntp"), TIMEOUT, ATTEMPTS
    )
    assert (outcome.state, outcome.evidence) == (
        State.OPEN,
        "NTP server unsynchronised (stratum 0, leap indicator 3)",
    )
    assert details(outcome)["ntp"] == "unsynchronised"


def _server_reply(request: bytes, first: int, stratum: int, refid: bytes, echo: bool = True) -> bytes:
    transmit = request[40:48] if echo else bytes(8)
    return struct.pack("!BBbbII4s", first, stratum, 6, -20, 0, 0, refid) + bytes(8) + transmit + bytes(16)


async def test_kiss_of_death_reads_open_with_its_code() -> None:
    async with hostile.serve_udp(lambda req: _server_reply(req, 0b11_100_100, 0, b"RATE")) as port:
        outcome = await ntp.check(
            Resolved(socket.AF_INET, "127.0.0.1"), Target("127.0.0.1", port, "ntp"), 0.5, 2
        )
    assert (outcome.state, outcome.evidence) == (State.OPEN, "NTP kiss-o'-death RATE")


async def test_reply_that_does_not_echo_our_timestamp_is_not_taken_for_an_answer() -> None:
    async with hostile.serve_udp(
        lambda req: _server_reply(req, 0b00_100_100, 2, b"\x7f\0\0\1", echo=False)
    ) as port:
        outcome = await ntp.check(
            Resolved(socket.AF_INET, "127.0.0.1"), Target("127.0.0.1", port, "ntp"), 0.5, 2
        )
    assert (outcome.state, outcome.evidence) == (
        State.OPEN,
        "not NTP: reply does not echo our transmit timestamp",
    )
    assert details(outcome)["protocol"] == "bad"


async def test_a_client_echoing_our_request_is_not_a_server() -> None:
    async with hostile.serve_udp(lambda req: req) as port:
        outcome = await ntp.check(
            Resolved(socket.AF_INET, "127.0.0.1"), Target("127.0.0.1", port, "ntp"), 0.5, 2
        )
    assert outcome.state is State.OPEN and outcome.evidence.startswith(
        "not NTP: mode 3 reply (expected 4): b'#"
    )
