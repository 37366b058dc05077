"""What the wire said: the one Outcome type every probe returns, and how OS errors map onto it.

Nothing in here knows about Prometheus or the schedule.
"""

from __future__ import annotations

import enum
import errno as _errno
from dataclasses import dataclass


class State(enum.StrEnum):
    """How a path answered. Only REFUSED, FILTERED and UNREACHABLE are network verdicts against it;
    DNS_ERROR and LOCAL_ERROR are the prober's own trouble and never count as a block."""

    OPEN = "open"
    REFUSED = "refused"  # RST, or ICMP port-unreachable: reachable host, nothing (or a reject rule) there
    FILTERED = "filtered"  # silence on every attempt: dropped on the way
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable or administratively prohibited
    DNS_ERROR = "dns_error"  # the target name did not resolve
    LOCAL_ERROR = "local_error"  # our side: out of fds/buffers/ports, cancelled, misconfigured

    @property
    def is_block(self) -> bool:
        return self in (State.REFUSED, State.FILTERED, State.UNREACHABLE)


STATES: tuple[State, ...] = tuple(State)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One probe's result: the state, the round-trip time when there was one, and the evidence."""

    state: State
    rtt: float | None = None  # seconds to the answer (SYN-ACK, RST, ICMP, reply) or to giving up
    evidence: str = ""  # errno name / WSAE code, "timeout x3", banner line...
    attempts: int = 1
    #: protocol facts for the API, bounded and sanitised by the probe: ("banner", "220 ex01 ..."),
    #: ("krb_error", "KDC_ERR_PREAUTH_REQUIRED"), ("http_status", "200"), ("dc_flags", "GC|LDAP|..."),
    #: ("starttls", "offered")...
    details: tuple[tuple[str, str], ...] = ()
    #: not-after of the peer's TLS certificate (unix time), when the check saw one
    cert_expiry: float | None = None
    #: whether the service spoke its protocol correctly (and, for a health page, reported healthy);
    #: None for a bare connect or when no conversation took place
    protocol_ok: bool | None = None
    #: named sub-results of one check, e.g. each Exchange health page of https-health: ("owa", True)
    subchecks: tuple[tuple[str, bool], ...] = ()
    #: dynamic TCP endpoints the RPC endpoint mapper registered: (interface name, port), when it answered
    endpoints: tuple[tuple[str, int], ...] = ()


# Windows Sockets error codes, so an agent on an Exchange server classifies the same way.
WSAEACCES = 10013
WSAEWOULDBLOCK = 10035
WSAEINPROGRESS = 10036
WSAEMFILE = 10024
WSAEADDRINUSE = 10048
WSAEADDRNOTAVAIL = 10049
WSAENETDOWN = 10050
WSAENETUNREACH = 10051
WSAECONNABORTED = 10053
WSAECONNRESET = 10054
WSAENOBUFS = 10055
WSAETIMEDOUT = 10060
WSAECONNREFUSED = 10061
WSAEHOSTDOWN = 10064
WSAEHOSTUNREACH = 10065

WSA_NAMES = {
    WSAEACCES: "WSAEACCES",
    WSAEWOULDBLOCK: "WSAEWOULDBLOCK",
    WSAEINPROGRESS: "WSAEINPROGRESS",
    WSAEMFILE: "WSAEMFILE",
    WSAEADDRINUSE: "WSAEADDRINUSE",
    WSAEADDRNOTAVAIL: "WSAEADDRNOTAVAIL",
    WSAENETDOWN: "WSAENETDOWN",
    WSAENETUNREACH: "WSAENETUNREACH",
    WSAECONNABORTED: "WSAECONNABORTED",
    WSAECONNRESET: "WSAECONNRESET",
    WSAENOBUFS: "WSAENOBUFS",
    WSAETIMEDOUT: "WSAETIMEDOUT",
    WSAECONNREFUSED: "WSAECONNREFUSED",
    WSAEHOSTDOWN: "WSAEHOSTDOWN",
    WSAEHOSTUNREACH: "WSAEHOSTUNREACH",
}

_WSA_STATES = {
    WSAECONNREFUSED: State.REFUSED,
    WSAECONNRESET: State.REFUSED,
    WSAETIMEDOUT: State.FILTERED,
    WSAEHOSTUNREACH: State.UNREACHABLE,
    WSAEHOSTDOWN: State.UNREACHABLE,
    WSAENETUNREACH: State.UNREACHABLE,
    WSAEACCES: State.UNREACHABLE,  # blocked by a local or remote policy
    WSAEMFILE: State.LOCAL_ERROR,
    WSAENOBUFS: State.LOCAL_ERROR,
    WSAEADDRNOTAVAIL: State.LOCAL_ERROR,
    WSAEADDRINUSE: State.LOCAL_ERROR,
    WSAENETDOWN: State.LOCAL_ERROR,  # our own interface is down
}


def _posix(*names: str) -> list[int]:
    return [getattr(_errno, name) for name in names if hasattr(_errno, name)]


_POSIX_STATES: dict[int, State] = {}
for _code in _posix("ECONNREFUSED", "ECONNRESET"):
    _POSIX_STATES[_code] = State.REFUSED
for _code in _posix("ETIMEDOUT"):
    _POSIX_STATES[_code] = State.FILTERED
# ICMP host/net unreachable and admin-prohibited (IPv4 -> EHOSTUNREACH, IPv6 -> EACCES), or a local
# firewall's reject (EPERM): a network policy said no.
for _code in _posix("EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "EACCES", "EPERM", "ENONET"):
    _POSIX_STATES[_code] = State.UNREACHABLE
for _code in _posix(
    "EMFILE",
    "ENFILE",
    "ENOBUFS",
    "ENOMEM",
    "EADDRNOTAVAIL",
    "EADDRINUSE",
    "EAGAIN",
    "EINVAL",
    "EAFNOSUPPORT",
    "ENETDOWN",
    "EBADF",
    "ENOTSOCK",
    "EPROTONOSUPPORT",
):
    _POSIX_STATES[_code] = State.LOCAL_ERROR


def os_error_code(exc: OSError) -> int:
    """The code to classify an OSError by: the Windows Sockets code where Windows gave one (an errno
    there is Python's translation of it), else the errno; 0 when there is neither."""
    winerror = getattr(exc, "winerror", None)
    return int(winerror or exc.errno or 0)


def errno_name(code: int) -> str:
    """`ECONNREFUSED`, `WSAECONNREFUSED(10061)` or `errno 999` for evidence strings."""
    if code in WSA_NAMES:
        return f"{WSA_NAMES[code]}({code})"
    return _errno.errorcode.get(code, f"errno {code}")


def classify_errno(code: int) -> State:
    """The state an OS error code means. Unknown codes are our own error, never a block."""
    if code in _WSA_STATES:
        return _WSA_STATES[code]
    return _POSIX_STATES.get(code, State.LOCAL_ERROR)


#: what a non-blocking connect() returns while the handshake is in flight (POSIX, then Windows). Linux's
#: EAGAIN from connect() means "no local port left" and is deliberately not in here.
IN_PROGRESS = frozenset([*_posix("EINPROGRESS"), WSAEWOULDBLOCK, WSAEINPROGRESS])
