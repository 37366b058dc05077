"""Locate a block: which device, how many hops away, for a blocked path. Unprivileged, Linux.

A TCP socket with its TTL (IPv6: hop limit) set to k and IP_RECVERR enabled, connecting to the target,
fails at once with EHOSTUNREACH when the TTL runs out, and its error queue holds the ICMP time-exceeded
with the address of the hop that sent it. Trying k = 1, 2, ... (in parallel, bounded) lists the hops:
- filtered: the hops that answer, and the last one before silence ("silent after hop 3 (10.1.2.1)"); the
  target's distance (the TTL at which its open ports answer) tells "dropped before the target" from
  "silent at the target's last hop", where a router's forward-chain drop and the target's own host
  firewall look the same to a TTL probe (a router answers time-exceeded before it filters);
- unreachable: the ICMP error names the rejecting device (admin-prohibited, host/net unreachable) and
  the hop list places it;
- refused: the smallest TTL at which the reset comes back. A device short of the target's last hop
  resets at a smaller TTL than the target's distance: it is named. At the target's distance a reset
  from the host and one from a device at the last hop look the same without the received TTL (a raw
  socket): "the host, or a device at the last hop", never a guess.
Elsewhere (Windows) `locate` says that locating is not available on this platform.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
import time
from dataclasses import dataclass

from exporter.probes import bind, bpf, errqueue
from exporter.probes.contract import Resolved
from exporter.probes.outcome import State

MAX_HOPS = 30
PARALLEL = 8  # TTL probes in flight for one trace
_IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)
ICMP_KINDS = {
    # (origin, type, code) -> what it says; origin 2 = ICMP, 3 = ICMPv6
    (2, 3, 0): "net-unreachable",
    (2, 3, 1): "host-unreachable",
    (2, 3, 3): "port-unreachable",
    (2, 3, 9): "net-prohibited",
    (2, 3, 10): "host-prohibited",
    (2, 3, 13): "admin-prohibited",
    (3, 1, 0): "no-route",
    (3, 1, 1): "admin-prohibited",
    (3, 1, 3): "host-unreachable",
    (3, 1, 4): "port-unreachable",
    (3, 1, 5): "policy-failed",
    (3, 1, 6): "reject-route",
}


@dataclass(frozen=True, slots=True)
class Hop:
    """What TTL `ttl` met: a router's time-exceeded (address), the target's answer, an ICMP error, or
    silence."""

    ttl: int
    answer: str  # "time-exceeded" | "open" | "refused" | an ICMP_KINDS value | "silent" | "error"
    address: str | None = None  # who answered


@dataclass(frozen=True, slots=True)
class Location:
    """Where a blocked path is blocked, as far as TTL probes can tell."""

    how: str  # one line for people: "silent after hop 2 (10.1.2.1): dropped there or beyond"
    hop: int | None = None  # the hop of the device named, when one is
    device: str | None = None  # its address
    verdict: str = ""  # dropped | rejected | reset-by-device | reset-host-or-last-hop | unavailable
    hops: tuple[Hop, ...] = ()
    located_at: float = 0.0
    device_name: str | None = None  # reverse DNS, filled in by the caller when it resolves

    @property
    def by_device(self) -> bool:
        """A device in the path answered for the target (a firewall): a violation, whatever the state."""
        return self.verdict in ("rejected", "reset-by-device")


def available() -> bool:
    return errqueue.LINUX


async def _ttl_probe(resolved: Resolved, port: int, ttl: int, timeout: float, local: str = "") -> Hop:
    """One TCP connect with TTL (hop limit) `ttl`, from the source address `local` when given: what came
    back."""
    loop = asyncio.get_running_loop()
    six = resolved.family == socket.AF_INET6
    try:
        sock = socket.socket(resolved.family, socket.SOCK_STREAM)
    except OSError:
        return Hop(ttl, "error")
    try:
        sock.setblocking(False)
        errqueue.enable(sock)
        try:
            bind.bind(sock, resolved.family, local)
        except bind.BindError:
            return Hop(ttl, "error")  # ours: the probes already say so (local_error)
        if six:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_UNICAST_HOPS, ttl)
            address: tuple[str, int] | tuple[str, int, int, int] = (resolved.host, port, 0, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            address = (resolved.host, port)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
        except TimeoutError:
            return Hop(ttl, "silent")
        except OSError as exc:
            origin = error_queue(sock)
            if origin is not None:
                kind, sender = origin
                return Hop(ttl, kind, sender)
            if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
                return Hop(ttl, "refused", resolved.host)
            return Hop(ttl, "error")
        return Hop(ttl, "open", resolved.host)
    finally:
        sock.close()


def error_queue(sock: socket.socket) -> tuple[str, str | None] | None:
    """(what the ICMP error says, who sent it) from the socket's error queue, or None."""
    found = errqueue.read(sock, drain=4)
    if found is None:
        return None
    if (found.origin, found.type) in ((errqueue.ORIGIN_ICMP, 11), (errqueue.ORIGIN_ICMP6, 3)):
        return "time-exceeded", found.sender
    kind = ICMP_KINDS.get((found.origin, found.type, found.code), f"icmp-{found.type}/{found.code}")
    return kind, found.sender


def raw_socket(family: int) -> socket.socket | None:
    """A raw IPPROTO_TCP socket, which sees incoming TCP segments with their TTL, filtered in the kernel
    to resets and SYN-ACKs; None without CAP_NET_RAW (root, or granted to the service), the usual case,
    and then nothing is guessed."""
    try:
        raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except OSError:
        return None
    try:
        raw.setblocking(False)
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        bpf.attach(raw, bpf.resets_and_syn_acks(family == socket.AF_INET6))
    except OSError:
        raw.close()
        return None
    return raw


MAX_RAW_READS = 256  # segments read per wake-up of the shared raw socket (others' resets included)
ANSWER_WAIT = 0.2  # how long after our connect ended its answer may still arrive on the raw socket

# key of one awaited answer: (the peer's address, its port, our local port)
_Key = tuple[str, int, int]


class _RawReader:
    """One raw socket per address family for every locator of the process, open while someone waits on
    it: segments are matched to the connections that wait for them by address and ports, the rest is
    dropped (the kernel filter already keeps only resets and SYN-ACKs). Bounded: the waiters are the
    locator's connections in flight (it runs a few at a time); each wake-up reads at most MAX_RAW_READS."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, raw: socket.socket) -> None:
        self.loop, self.family, self.raw = loop, family, raw
        self.waiters: dict[_Key, asyncio.Future[int]] = {}
        self.users = 0
        loop.add_reader(raw.fileno(), self._readable)

    def expect(self, key: _Key) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self.loop.create_future()
        self.waiters[key] = future
        return future

    def forget(self, key: _Key) -> None:
        future = self.waiters.pop(key, None)
        if future is not None and not future.done():
            future.cancel()

    def _readable(self) -> None:
        six = self.family == socket.AF_INET6
        for _ in range(MAX_RAW_READS):
            try:
                data, ancillary, _flags, sender = self.raw.recvmsg(256, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a transient error on a raw socket: the waiters time out, nothing is guessed
            parsed = _segment(data, ancillary, sender, six)
            if parsed is None:
                continue
            future = self.waiters.get(parsed[0])
            if future is not None and not future.done():
                future.set_result(parsed[1])

    def close(self) -> None:
        self.loop.remove_reader(self.raw.fileno())
        self.raw.close()
        for future in self.waiters.values():
            if not future.done():
                future.cancel()
        self.waiters.clear()


_readers: dict[tuple[int, int], _RawReader] = {}


def _acquire(family: int) -> _RawReader | None:
    loop = asyncio.get_running_loop()
    key = (id(loop), family)
    reader = _readers.get(key)
    if reader is None or reader.loop is not loop:
        raw = raw_socket(family)
        if raw is None:
            return None
        try:
            reader = _RawReader(loop, family, raw)
        except (NotImplementedError, RuntimeError):
            raw.close()  # a loop without fd callbacks: no raw reading there
            return None
        _readers[key] = reader
    reader.users += 1
    return reader


def _release(reader: _RawReader) -> None:
    reader.users -= 1
    if reader.users <= 0:
        _readers.pop((id(reader.loop), reader.family), None)
        reader.close()


async def received_ttl(resolved: Resolved, port: int, timeout: float = 1.0, local: str = "") -> int | None:
    """The TTL (hop limit) with which the answer to a connect to `port` (from `local`, when given) arrived:
    a SYN-ACK or a RST, matched to our own connection by address and ports on the process's one raw
    socket. None without CAP_NET_RAW, when nothing matched, or when `local` cannot be bound."""
    reader = _acquire(resolved.family)
    if reader is None:
        return None
    loop = asyncio.get_running_loop()
    six = resolved.family == socket.AF_INET6
    sock = socket.socket(resolved.family, socket.SOCK_STREAM)
    key: _Key | None = None
    try:
        sock.setblocking(False)
        try:
            if local:
                bind.bind(sock, resolved.family, local, stream=False)  # the port is needed now
            else:
                sock.bind(("::", 0, 0, 0) if six else ("0.0.0.0", 0))
        except OSError:
            return None
        key = (resolved.host, port, sock.getsockname()[1])
        answer = reader.expect(key)  # before the SYN leaves, so its answer cannot slip past
        address: tuple[str, int] | tuple[str, int, int, int] = (
            (resolved.host, port, 0, 0) if six else (resolved.host, port)
        )
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
        except (TimeoutError, OSError):
            pass
        try:
            return await asyncio.wait_for(answer, ANSWER_WAIT)
        except TimeoutError:
            return None
    finally:
        if key is not None:
            reader.forget(key)
        sock.close()
        _release(reader)


def _segment(
    data: bytes, ancillary: list[tuple[int, int, bytes]], sender: tuple[object, ...], six: bool
) -> tuple[_Key, int] | None:
    """((peer address, peer port, our port), TTL) of one segment the raw socket read; None when short."""
    if six:
        if not sender or len(data) < 4:
            return None
        host = str(sender[0]).split("%")[0]
        hops = None
        for level, kind, blob in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(blob) >= 4:
                hops = int.from_bytes(blob[:4], sys.byteorder)
        if hops is None:
            return None
        tcp, ttl = data, hops
    else:
        if len(data) < 20:
            return None
        host = socket.inet_ntop(socket.AF_INET, data[12:16])
        header = (data[0] & 0x0F) * 4
        tcp, ttl = data[header:], data[8]
    if len(tcp) < 4:
        return None
    source_port, dest_port = struct.unpack_from("!HH", tcp)
    return (host, source_port, dest_port), ttl


def hops_travelled(ttl: int) -> int:
    """How many routers decremented a TTL that arrived as `ttl` (initial TTLs are 64, 128 or 255)."""
    initial = next(value for value in (64, 128, 255) if value >= ttl)
    return initial - ttl


async def trace(
    resolved: Resolved, port: int, timeout: float = 1.0, max_hops: int = MAX_HOPS, local: str = ""
) -> list[Hop]:
    """TTL-limited connects (from the source address `local`, when given) from hop 1 upwards, PARALLEL at a
    time, until the target (or an ICMP error other than time-exceeded) answers, or `max_hops`. Silence
    after the last answer ends it too: what lies beyond a drop cannot answer."""
    hops: list[Hop] = []
    ttl = 1
    while ttl <= max_hops:
        # hop 1 alone first: a target on the same network answers there, and costs one connect
        width = 1 if ttl == 1 else PARALLEL
        batch = range(ttl, min(ttl + width, max_hops + 1))
        results = await asyncio.gather(*(_ttl_probe(resolved, port, k, timeout, local) for k in batch))
        for hop in results:
            hops.append(hop)
            if hop.answer != "time-exceeded":
                # the first non-router answer ends the trace (later TTLs would only repeat it)
                return _until_final(hops)
        ttl += width
    return hops


def _until_final(hops: list[Hop]) -> list[Hop]:
    for index, hop in enumerate(hops):
        if hop.answer != "time-exceeded":
            return hops[: index + 1]
    return hops


async def locate(
    resolved: Resolved,
    port: int,
    state: State,
    *,
    distance: int | None = None,
    open_port: int | None = None,
    timeout: float = 1.0,
    max_hops: int = MAX_HOPS,
    local: str = "",
) -> Location:
    """Where `port` of the target at `resolved` is blocked, given how it was blocked (`state`) and, when
    known, the target's distance in hops (the TTL at which its open ports answer). Every connect is made
    from the source address `local`, when given (the probes' own: the same route)."""
    now = time.time()
    if not available():
        return Location("location not available on this platform", verdict="unavailable", located_at=now)
    hops = tuple(await trace(resolved, port, timeout, max_hops, local))
    routers = [h for h in hops if h.answer == "time-exceeded"]
    last = hops[-1] if hops else None

    def named(ttl: int) -> str:
        hop = next((h for h in routers if h.ttl == ttl), None)
        return f"hop {ttl} ({hop.address})" if hop and hop.address else f"hop {ttl}"

    if last is None:
        return Location("no answer at any hop", verdict="dropped", hops=hops, located_at=now)
    if last.answer in ("open",):
        return Location("open now: nothing blocks it", verdict="open", hops=hops, located_at=now)
    if last.answer not in ("silent", "refused", "error", "time-exceeded"):
        device_hop = next((h.ttl for h in routers if h.address == last.address), None)
        if device_hop is None and last.address is not None and last.address != resolved.host:
            device_hop = last.ttl - 1 if last.ttl > 1 else 1  # it answered for the TTL that reached it
        where = f"hop {device_hop}, " if device_hop else ""
        return Location(
            f"rejected by {last.address} ({where}{last.answer})",
            device_hop,
            last.address,
            "rejected",
            hops,
            now,
        )
    if last.answer == "refused":
        if distance is not None and last.ttl < distance:
            device = routers[-1].address if routers else None
            return Location(
                f"reset by a device at {named(last.ttl - 1)}, before the target (hop {distance})",
                last.ttl - 1,
                device,
                "reset-by-device",
                hops,
                now,
            )
        told = await _reset_by_ttl(resolved, port, open_port, timeout, routers, last.ttl, hops, now, local)
        if told is not None:
            return told
        return Location(
            f"reset at hop {last.ttl}: by the host, or by a device at the last hop "
            "(telling them apart needs the reset's received TTL: CAP_NET_RAW)",
            last.ttl,
            None,
            "reset-host-or-last-hop",
            hops,
            now,
        )
    # silence (filtered)
    answered = routers[-1] if routers else None
    if answered is None:
        return Location(
            "silent from hop 1: dropped at the first hop or beyond", 1, None, "dropped", hops, now
        )
    if distance is not None and answered.ttl == distance - 1:
        how = (
            f"silent at the target (hop {distance}) after {named(answered.ttl)}: dropped by that last "
            "router or by the target's own host firewall"
        )
    elif distance is not None and answered.ttl < distance - 1:
        how = (
            f"silent after {named(answered.ttl)}: dropped there or beyond, before the target (hop {distance})"
        )
    else:
        how = f"silent after {named(answered.ttl)}: dropped there or beyond"
    return Location(how, answered.ttl, answered.address, "dropped", hops, now)


async def _reset_by_ttl(
    resolved: Resolved,
    port: int,
    open_port: int | None,
    timeout: float,
    routers: list[Hop],
    reached: int,
    hops: tuple[Hop, ...],
    now: float,
    local: str = "",
) -> Location | None:
    """With CAP_NET_RAW: compare the reset's received TTL with the host's own SYN-ACK's. The same: the
    host reset it (nothing listens); different: a device did, at the hop its TTL says. None when either
    TTL cannot be read (no capability, no open port to compare with)."""
    if open_port is None:
        return None
    host_ttl = await received_ttl(resolved, open_port, timeout, local)
    reset_ttl = await received_ttl(resolved, port, timeout, local)
    if host_ttl is None or reset_ttl is None:
        return None
    if reset_ttl == host_ttl:
        return Location(
            f"reset by the host itself at hop {reached} (its reset came with its own TTL, {reset_ttl}): "
            "nothing listens there",
            reached,
            resolved.host,
            "reset-by-host",
            hops,
            now,
        )
    hop = hops_travelled(reset_ttl) + 1
    device = next((h.address for h in routers if h.ttl == hop), None)
    named = f" ({device})" if device else ""
    return Location(
        f"reset by a device at hop {hop}{named}, not the host (TTL {reset_ttl}, the host's {host_ttl})",
        hop,
        device,
        "reset-by-device",
        hops,
        now,
    )


async def distance_to(
    resolved: Resolved, port: int, timeout: float = 1.0, max_hops: int = MAX_HOPS, local: str = ""
) -> int | None:
    """The TTL at which the target answers on `port` (an open one): its distance in hops."""
    hops = await trace(resolved, port, timeout, max_hops, local)
    last = hops[-1] if hops else None
    return last.ttl if last is not None and last.answer in ("open", "refused") else None
