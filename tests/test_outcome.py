"""OS error codes, POSIX and Windows, map onto the same states; local errors are never blocks."""

from __future__ import annotations

import errno
import socket

import pytest

from exporter.probes import udp
from exporter.probes.outcome import IN_PROGRESS, State, classify_errno, errno_name, os_error_code


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (errno.ECONNREFUSED, State.REFUSED),
        (errno.ECONNRESET, State.REFUSED),
        (errno.ETIMEDOUT, State.FILTERED),
        (errno.EHOSTUNREACH, State.UNREACHABLE),
        (errno.ENETUNREACH, State.UNREACHABLE),
        (errno.EACCES, State.UNREACHABLE),  # ICMPv6 administratively prohibited
        (errno.EPERM, State.UNREACHABLE),  # a local firewall's reject
        (errno.EMFILE, State.LOCAL_ERROR),
        (errno.ENFILE, State.LOCAL_ERROR),
        (errno.ENOBUFS, State.LOCAL_ERROR),
        (errno.EADDRNOTAVAIL, State.LOCAL_ERROR),
        (errno.EAGAIN, State.LOCAL_ERROR),  # Linux connect(): no local port left
        (errno.ENOMEM, State.LOCAL_ERROR),
    ],
)
def test_posix_errno_maps_to_state(code: int, state: State) -> None:
    assert classify_errno(code) is state


@pytest.mark.parametrize(
    ("code", "state", "name"),
    [
        (10061, State.REFUSED, "WSAECONNREFUSED(10061)"),
        (10054, State.REFUSED, "WSAECONNRESET(10054)"),
        (10060, State.FILTERED, "WSAETIMEDOUT(10060)"),
        (10065, State.UNREACHABLE, "WSAEHOSTUNREACH(10065)"),
        (10051, State.UNREACHABLE, "WSAENETUNREACH(10051)"),
        (10013, State.UNREACHABLE, "WSAEACCES(10013)"),
        (10024, State.LOCAL_ERROR, "WSAEMFILE(10024)"),
        (10055, State.LOCAL_ERROR, "WSAENOBUFS(10055)"),
        (10049, State.LOCAL_ERROR, "WSAEADDRNOTAVAIL(10049)"),
    ],
)
def test_windows_socket_error_maps_to_the_same_state(code: int, state: State, name: str) -> None:
    assert classify_errno(code) is state
    assert errno_name(code) == name


def test_unknown_error_code_is_a_local_error_not_a_block() -> None:
    assert classify_errno(99999) is State.LOCAL_ERROR
    assert not State.LOCAL_ERROR.is_block and not State.DNS_ERROR.is_block


def test_in_progress_codes_cover_posix_and_windows_but_not_linux_eagain() -> None:
    assert errno.EINPROGRESS in IN_PROGRESS and 10035 in IN_PROGRESS
    assert errno.EAGAIN not in IN_PROGRESS


def test_blocks_are_exactly_refused_filtered_unreachable() -> None:
    assert {s for s in State if s.is_block} == {State.REFUSED, State.FILTERED, State.UNREACHABLE}


class _WinsockError(ConnectionResetError):
    """An OSError as Windows raises it: `winerror` is the Winsock code (Linux's OSError has no such
    attribute, so the test sets it); Python's errno translation may differ (WSAEACCES -> 13)."""

    def __init__(self, errno_value: int, winerror: int) -> None:
        super().__init__(errno_value, "from Windows")
        self.winerror = winerror


def test_the_winsock_code_is_classified_where_windows_gives_one() -> None:
    assert os_error_code(_WinsockError(10054, 10054)) == 10054
    assert os_error_code(_WinsockError(13, 10013)) == 10013  # WSAEACCES, translated to EACCES by Python
    assert os_error_code(ConnectionRefusedError(errno.ECONNREFUSED, "linux")) == errno.ECONNREFUSED
    assert os_error_code(OSError("no code")) == 0


def test_icmp_port_unreachable_on_a_windows_udp_socket_reads_refused() -> None:
    """Windows reports an ICMP port-unreachable on a connected UDP socket as WSAECONNRESET on the next
    receive; the UDP probe turns that into REFUSED, as Linux's ECONNREFUSED."""
    sock = udp.open_socket(socket.AF_INET)
    try:
        outcome = udp._error(sock, _WinsockError(10054, 10054), 0.01, 1)
    finally:
        sock.close()
    assert (outcome.state, outcome.evidence) == (State.REFUSED, "WSAECONNRESET(10054)")
