"""The agent's source address (--probe.source-address): every probe socket is bound to it before it connects.

A multi-homed Exchange server (a MAPI network and a replication network) must probe from the address whose
path matters, not from whichever one the routing table picks. A bind that fails (an address this host does
not have: EADDRNOTAVAIL) is our own trouble: BindError, which every caller reports as local_error with the
evidence it carries, never as a network verdict. An address of the other family than the target's cannot
be bound either, and reads local_error too ("... is IPv4, the target is IPv6"): a path is never probed,
unnoticed, from an address nobody chose.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import socket
import sys

from exporter.probes.outcome import errno_name, os_error_code

#: Linux: choose the local port at connect() (per destination) instead of reserving it at bind(), so a bound
#: prober has as many ports per target as an unbound one. Python 3.11 does not export it; None elsewhere.
IP_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None
)
_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


class BindError(OSError):
    """The socket could not take the source address. Ours, never the network's; `strerror` is the
    evidence."""


def family_of(local: str) -> int:
    """AF_INET or AF_INET6 for an address literal (an IPv6 one may carry a %scope); ValueError otherwise."""
    address = ipaddress.ip_address(local)
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


@functools.lru_cache(maxsize=64)
def _sockaddr(local: str, family: int) -> tuple[str, int] | tuple[str, int, int, int] | None:
    """The bind address for `local` in `family` (port 0), or None when `local` is of the other family."""
    if family_of(local) != family:
        return None
    found = socket.getaddrinfo(local, 0, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    return found[0][4]  # type: ignore[return-value]


def bind(sock: socket.socket, family: int, local: str, *, stream: bool = True) -> None:
    """Bind `sock` (of `family`) to `local` with any port; nothing when `local` is "". Raises BindError."""
    if not local:
        return
    address = _sockaddr(local, family)
    if address is None:
        raise BindError(
            errno.EAFNOSUPPORT,
            f"source address {local} is {_FAMILY_NAMES[family_of(local)]}, "
            f"the target is {_FAMILY_NAMES.get(family, f'family {family}')}",
        )
    if stream and IP_BIND_ADDRESS_NO_PORT is not None:
        with contextlib.suppress(OSError):  # an old kernel: the port is taken at bind(), which still works
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        code = os_error_code(exc)
        raise BindError(
            exc.errno or code, f"cannot bind to source address {local}: {errno_name(code)}"
        ) from None


def evidence(exc: OSError) -> str:
    """The evidence for a socket that could not be opened or bound (both local errors)."""
    if isinstance(exc, BindError):
        return str(exc.strerror)
    return errno_name(os_error_code(exc))
