"""RPC endpoint-mapper probe (135/tcp) and the dynamic ports it hands out.

A DCE/RPC bind to the endpoint mapper (E1AF8308-5D1F-11C9-91A4-08002B14A0FA v3.0, NDR), then ept_lookup
(opnum 2) until the mapper has listed every registration: each distinct ncacn_ip_tcp port becomes its
own path `rpc:<interface>` (a known interface's name, else the UUID's first 8 hex digits; at most
MAX_DYNAMIC_PORTS a host), probed with a TCP connect right after this lookup (an MSRPC-aware firewall
opens a dynamic port only after it saw the mapper's answer). On Exchange 2013 and later none of the
classic interfaces (EMSMDB, NSPI) is registered over TCP, so enumerating is what finds the Exchange
services' dynamic ports. "135 open but the rpc: port filtered" is the classic broken-firewall signature.
A mapper that refuses the enumeration is asked with ept_map (opnum 3) for DRSUAPI, Netlogon, EMSMDB
and NSPI instead.

The wire format is hand-rolled (after MS-RPCE and C706) rather than taken from impacket: the exchange
stays asynchronous, cancellable and bounded (256 KiB per response, 64 KiB per fragment, 20 lookups,
2,000 entries), and the exporter needs no optional dependency for it.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from exporter.probes.contract import Resolved, Target
from exporter.probes.conversation import (
    Conversation,
    ProtocolError,
    Stream,
    connected,
    converse,
    deadline,
    first_bytes,
)
from exporter.probes.outcome import Outcome, State

EPM_INTERFACE = (uuid.UUID("e1af8308-5d1f-11c9-91a4-08002b14a0fa"), 3, 0)
NDR = (uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2, 0)

#: name -> (interface UUID, major, minor): the RPC interfaces whose dynamic ports a firewall must pass
INTERFACES: dict[str, tuple[uuid.UUID, int, int]] = {
    "drsuapi": (uuid.UUID("e3514235-4b06-11d1-ab04-00c04fc2dcd2"), 4, 0),
    "netlogon": (uuid.UUID("12345678-1234-abcd-ef00-01234567cffb"), 1, 0),
    "emsmdb": (uuid.UUID("a4f1db00-ca47-1067-b31f-00dd010662da"), 0, 81),
    "nspi": (uuid.UUID("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0),
}
#: interface UUID -> the name a dynamic port is labelled with (service="rpc:<name>"), most telling first:
#: when several interfaces share a port (lsass hosts a dozen), the port takes the first name here. Others
#: are labelled with their UUID's first 8 hex digits. (MS-DRSR, MS-NRPC, MS-OXCRPC, MS-NSPI, MS-OXABREF,
#: MS-LSAD, MS-SAMR, MS-DSSP, MS-RPRN, MS-TSCH, MS-SCMR, MS-EVEN6, MS-DCOM)
KNOWN_INTERFACES: dict[uuid.UUID, str] = {
    uuid.UUID("e3514235-4b06-11d1-ab04-00c04fc2dcd2"): "drsuapi",
    uuid.UUID("12345678-1234-abcd-ef00-01234567cffb"): "netlogon",
    uuid.UUID("a4f1db00-ca47-1067-b31f-00dd010662da"): "emsmdb",
    uuid.UUID("5261574a-4572-206e-b268-6b199213b4e4"): "emsmdb-async",
    uuid.UUID("f5cc5a18-4264-101a-8c59-08002b2f8426"): "nspi",
    uuid.UUID("1544f5e0-613c-11d1-93df-00c04fd7bd09"): "rfr",
    uuid.UUID("12345778-1234-abcd-ef00-0123456789ab"): "lsarpc",
    uuid.UUID("12345778-1234-abcd-ef00-0123456789ac"): "samr",
    uuid.UUID("3919286a-b10c-11d0-9ba8-00c04fd92ef5"): "dssetup",
    uuid.UUID("12345678-1234-abcd-ef00-0123456789ab"): "spoolss",
    uuid.UUID("86d35949-83c9-4044-b424-db363231fd0c"): "taskscheduler",
    uuid.UUID("367abb81-9844-35f1-ad32-98f038001003"): "svcctl",
    uuid.UUID("f6beaff7-1e19-4fbb-9f8f-b89e2018337c"): "eventlog",
    uuid.UUID("000001a0-0000-0000-c000-000000000046"): "dcom-remoteactivation",
}
_RANK = {name: rank for rank, name in enumerate(KNOWN_INTERFACES.values())}
#: the most dynamic ports one mapper may add as paths (the label set stays bounded)
MAX_DYNAMIC_PORTS = 16
MAX_LOOKUP_CALLS = 20
MAX_LOOKUP_ENTRIES = 2000
OPNUM_EPT_LOOKUP = 2

PTYPE_REQUEST, PTYPE_RESPONSE, PTYPE_FAULT, PTYPE_BIND, PTYPE_BIND_ACK, PTYPE_BIND_NAK = 0, 2, 3, 11, 12, 13
PFC_FIRST_LAST = 0x03
PFC_LAST_FRAG = 0x02
DREP_LE = b"\x10\x00\x00\x00"
MAX_FRAG = 5840  # what Windows uses; the peer may fragment below it
MAX_RESPONSE = 256 * 1024
MAX_FRAGMENTS = 64
OPNUM_EPT_MAP = 3
EPT_S_NOT_REGISTERED = 0x16C9A0D6
FLOOR_TCP, FLOOR_IP, FLOOR_RPC_CO, FLOOR_UUID = 0x07, 0x09, 0x0B, 0x0D
HEADER = struct.Struct("<BBBB4sHHI")  # version, minor, type, flags, drep, frag_length, auth_length, call_id


@dataclass(frozen=True, slots=True)
class EpmAnswer:
    """The mapper's Outcome and the (interface, port) pairs it registered over TCP."""

    outcome: Outcome
    endpoints: tuple[tuple[str, int], ...]


def _syntax(interface: tuple[uuid.UUID, int, int]) -> bytes:
    ident, major, minor = interface
    return ident.bytes_le + struct.pack("<HH", major, minor)


def _pdu(ptype: int, call_id: int, body: bytes) -> bytes:
    return HEADER.pack(5, 0, ptype, PFC_FIRST_LAST, DREP_LE, HEADER.size + len(body), 0, call_id) + body


def bind_pdu(call_id: int = 1) -> bytes:
    context = struct.pack("<HBB", 0, 1, 0) + _syntax(EPM_INTERFACE) + _syntax(NDR)
    return _pdu(PTYPE_BIND, call_id, struct.pack("<HHIBBH", MAX_FRAG, MAX_FRAG, 0, 1, 0, 0) + context)


def _floor(lhs: bytes, rhs: bytes) -> bytes:
    return struct.pack("<H", len(lhs)) + lhs + struct.pack("<H", len(rhs)) + rhs


def tcp_tower(interface: tuple[uuid.UUID, int, int]) -> bytes:
    """The ncacn_ip_tcp tower ept_map matches: interface, NDR, RPC connection-oriented, TCP port 0, IP 0."""
    ident, major, minor = interface
    ndr_id, ndr_major, ndr_minor = NDR
    floors = [
        _floor(bytes([FLOOR_UUID]) + ident.bytes_le + struct.pack("<H", major), struct.pack("<H", minor)),
        _floor(
            bytes([FLOOR_UUID]) + ndr_id.bytes_le + struct.pack("<H", ndr_major), struct.pack("<H", ndr_minor)
        ),
        _floor(bytes([FLOOR_RPC_CO]), struct.pack("<H", 0)),
        _floor(bytes([FLOOR_TCP]), struct.pack(">H", 0)),
        _floor(bytes([FLOOR_IP]), bytes(4)),
    ]
    return struct.pack("<H", len(floors)) + b"".join(floors)


def ept_map_pdu(call_id: int, interface: tuple[uuid.UUID, int, int], max_towers: int = 4) -> bytes:
    tower = tcp_tower(interface)
    stub = struct.pack("<I", 1) + bytes(16)  # obj: a pointer to the nil UUID
    stub += struct.pack("<III", 2, len(tower), len(tower)) + tower  # map_tower: referent, max_count, length
    stub += bytes(-len(stub) % 4)
    stub += bytes(20) + struct.pack("<I", max_towers)  # entry_handle (none yet), max_towers
    return _pdu(PTYPE_REQUEST, call_id, struct.pack("<IHH", len(stub), 0, OPNUM_EPT_MAP) + stub)


def tower_port(tower: bytes) -> int | None:
    """The TCP port in a tower's floors, or None when it has none (or the tower is cut short)."""
    try:
        return _tower_port(tower)
    except struct.error:
        return None


def _tower_port(tower: bytes) -> int | None:
    if len(tower) < 2:
        return None
    (count,) = struct.unpack_from("<H", tower)
    pos = 2
    for _ in range(min(count, 16)):
        (lhs_len,) = struct.unpack_from("<H", tower, pos)
        lhs = tower[pos + 2 : pos + 2 + lhs_len]
        pos += 2 + lhs_len
        (rhs_len,) = struct.unpack_from("<H", tower, pos)
        rhs = tower[pos + 2 : pos + 2 + rhs_len]
        pos += 2 + rhs_len
        if lhs[:1] == bytes([FLOOR_TCP]) and len(rhs) == 2:
            return int.from_bytes(rhs, "big")
    return None


def parse_ept_map(stub: bytes) -> tuple[list[int], int]:
    """(TCP ports of the returned towers, status) from an ept_map response stub; ValueError when the stub
    is not one (found by fuzzing: a short stub used to escape as struct.error)."""
    try:
        return _parse_ept_map(stub)
    except struct.error as exc:
        raise ValueError(f"ept_map response cut short: {exc}") from None


def _parse_ept_map(stub: bytes) -> tuple[list[int], int]:
    pos = 20  # entry_handle
    num_towers, max_count, _offset, actual = struct.unpack_from("<IIII", stub, pos)
    pos += 16
    if actual > min(max_count, 500) or num_towers > 500:
        raise ValueError(f"{actual} towers announced")
    referents = struct.unpack_from(f"<{actual}I", stub, pos)
    pos += 4 * actual
    ports: list[int] = []
    for referent in referents:
        if not referent:
            continue
        _max, length = struct.unpack_from("<II", stub, pos)
        pos += 8
        tower = stub[pos : pos + length]
        if len(tower) != length:
            raise ValueError("tower runs past the end")
        pos += length + (-length % 4)
        port = tower_port(tower)
        if port is not None:
            ports.append(port)
    (status,) = struct.unpack_from("<I", stub, pos)
    return ports, status


def ept_lookup_pdu(call_id: int, handle: bytes, max_entries: int = 100) -> bytes:
    """ept_lookup (opnum 2) for every element (RPC_C_EP_ALL_ELTS, any object, any interface, all
    versions), continuing from the context `handle` the previous call returned (zeros at first)."""
    stub = struct.pack("<IIII", 0, 0, 0, 1) + handle + struct.pack("<I", max_entries)
    return _pdu(PTYPE_REQUEST, call_id, struct.pack("<IHH", len(stub), 0, OPNUM_EPT_LOOKUP) + stub)


@dataclass(frozen=True, slots=True)
class Registration:
    """One endpoint-mapper entry with a TCP tower: which interface, on which port, and its annotation."""

    interface: uuid.UUID
    port: int
    annotation: str


def parse_ept_lookup(stub: bytes) -> tuple[bytes, list[Registration], int]:
    """(the next context handle, the entries with a TCP port, status) from an ept_lookup response stub;
    ValueError when the stub is not one."""
    try:
        return _parse_ept_lookup(stub)
    except (struct.error, ValueError) as exc:
        raise ValueError(f"ept_lookup response malformed: {exc}") from None


def _parse_ept_lookup(stub: bytes) -> tuple[bytes, list[Registration], int]:
    handle = bytes(stub[:20])
    if len(handle) != 20:
        raise ValueError("no context handle")
    num, max_count, _offset, actual = struct.unpack_from("<IIII", stub, 20)
    if actual > min(max_count, 500) or num > 500:
        raise ValueError(f"{actual} entries announced")
    pos = 36
    heads: list[tuple[bytes, int, str]] = []
    for _ in range(actual):
        obj = stub[pos : pos + 16]
        (referent,) = struct.unpack_from("<I", stub, pos + 16)
        _ann_offset, ann_length = struct.unpack_from("<II", stub, pos + 20)
        if ann_length > 64:
            raise ValueError(f"annotation of {ann_length} bytes")
        annotation = stub[pos + 28 : pos + 28 + ann_length].split(b"\0", 1)[0].decode("latin-1")
        pos += 28 + ann_length
        pos += -pos % 4
        heads.append((obj, referent, annotation))
    found: list[Registration] = []
    for _obj, referent, annotation in heads:
        if not referent:
            continue
        _max, length = struct.unpack_from("<II", stub, pos)
        pos += 8
        tower = stub[pos : pos + length]
        if len(tower) != length:
            raise ValueError("tower runs past the end")
        pos += length + (-length % 4)
        interface = tower_interface(tower)
        port = tower_port(tower)
        if interface is not None and port is not None:
            found.append(Registration(interface, port, annotation))
    (status,) = struct.unpack_from("<I", stub, pos)
    return handle, found, status


def tower_interface(tower: bytes) -> uuid.UUID | None:
    """The interface UUID in a tower's first floor, or None."""
    if len(tower) < 2 + 2 + 19 or tower[4] != FLOOR_UUID:
        return None
    return uuid.UUID(bytes_le=bytes(tower[5:21]))


def name_of(interface: uuid.UUID) -> str:
    return KNOWN_INTERFACES.get(interface, interface.hex[:8])


def dynamic_ports(registrations: list[Registration], mapper_port: int, limit: int) -> list[tuple[str, int]]:
    """One (name, port) per distinct TCP port other than the mapper's, named after its most telling
    interface; known interfaces' ports first, at most `limit`."""
    by_port: dict[int, str] = {}
    for entry in registrations:
        if not 0 < entry.port < 65536 or entry.port == mapper_port:
            continue
        name = name_of(entry.interface)
        current = by_port.get(entry.port)
        if current is None or _RANK.get(name, len(_RANK)) < _RANK.get(current, len(_RANK)):
            by_port[entry.port] = name
    ranked = sorted(by_port.items(), key=lambda item: (_RANK.get(item[1], len(_RANK)), item[0]))
    return [(name, port) for port, name in ranked[:limit]]


async def _enumerate(conv: Conversation, stream: Stream) -> list[Registration]:
    """Every registration with a TCP tower, in as many ept_lookup calls as the mapper needs (bounded)."""
    handle = bytes(20)
    found: list[Registration] = []
    for call_id in range(2, 2 + MAX_LOOKUP_CALLS):
        conv.step = "ept_lookup"
        await stream.send(ept_lookup_pdu(call_id, handle))
        try:
            handle, entries, status = parse_ept_lookup(await read_response(stream))
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        found.extend(entries)
        if status == EPT_S_NOT_REGISTERED or handle == bytes(20) or len(found) >= MAX_LOOKUP_ENTRIES:
            return found
        if status != 0:
            raise ProtocolError(f"ept_lookup: status 0x{status:08x}")
    return found


async def read_pdu(stream: Stream) -> tuple[int, int, bytes]:
    """One PDU: (type, flags, body after the common header)."""
    head = await stream.read_exactly(HEADER.size)
    version, _minor, ptype, flags, drep, frag_length, _auth, _call = HEADER.unpack(head)
    if version != 5 or frag_length < HEADER.size:
        raise ProtocolError(f"not DCE/RPC v5: {first_bytes(head)}")
    if drep[0] & 0xF0 != 0x10:
        raise ProtocolError("big-endian NDR is not spoken here")
    return ptype, flags, await stream.read_exactly(frag_length - HEADER.size)


async def read_response(stream: Stream) -> bytes:
    """A whole response stub, reassembled from its fragments."""
    stub = bytearray()
    for _ in range(MAX_FRAGMENTS):
        ptype, flags, body = await read_pdu(stream)
        if ptype == PTYPE_FAULT:
            (status,) = struct.unpack_from("<I", body, 8) if len(body) >= 12 else (0,)
            raise ProtocolError(f"fault 0x{status:08x}")
        if ptype != PTYPE_RESPONSE or len(body) < 8:
            raise ProtocolError(f"PDU type {ptype} where a response was due")
        stub += body[8:]
        if len(stub) > MAX_RESPONSE:
            raise ProtocolError(f"response over {MAX_RESPONSE} bytes")
        if flags & PFC_LAST_FRAG:
            return bytes(stub)
    raise ProtocolError(f"response in more than {MAX_FRAGMENTS} fragments")


async def _bind(conv: Conversation, stream: Stream) -> None:
    conv.step = "binding to the endpoint mapper"
    await stream.send(bind_pdu())
    ptype, _flags, body = await read_pdu(stream)
    if ptype == PTYPE_BIND_NAK:
        reason = struct.unpack_from("<H", body)[0] if len(body) >= 2 else -1
        raise ProtocolError(f"bind_nak, reason {reason}")
    if ptype != PTYPE_BIND_ACK:
        raise ProtocolError(f"PDU type {ptype} where bind_ack was due")
    # max_xmit, max_recv, assoc_group, then the secondary address (length-prefixed, 4-aligned)
    (address_length,) = struct.unpack_from("<H", body, 8)
    pos = 10 + address_length
    pos += -(pos + HEADER.size) % 4
    count, _r1, _r2, result, reason = struct.unpack_from("<BBHHH", body, pos)
    if count < 1 or result != 0:
        raise ProtocolError(f"bind rejected (result {result}, reason {reason})")


async def _map_all(
    conv: Conversation,
    stream: Stream,
    interfaces: dict[str, tuple[uuid.UUID, int, int]],
    bound: bool = False,
) -> list[tuple[str, int]]:
    if not bound:
        await _bind(conv, stream)
    endpoints: list[tuple[str, int]] = []
    for call_id, (name, interface) in enumerate(interfaces.items(), start=2 + MAX_LOOKUP_CALLS):
        conv.step = f"ept_map {name}"
        await stream.send(ept_map_pdu(call_id, interface))
        stub = await read_response(stream)
        try:
            ports, status = parse_ept_map(stub)
        except (ValueError, struct.error) as exc:
            raise ProtocolError(f"ept_map {name}: {exc}") from None
        if status not in (0, EPT_S_NOT_REGISTERED):
            raise ProtocolError(f"ept_map {name}: status 0x{status:08x}")
        for port in dict.fromkeys(ports):
            endpoints.append((name, port))
    return endpoints


async def lookup(
    resolved: Resolved,
    target: Target,
    timeout: float,
    attempts: int,
    interfaces: dict[str, tuple[uuid.UUID, int, int]] | None = None,
    max_ports: int = MAX_DYNAMIC_PORTS,
) -> EpmAnswer:
    """Ask the mapper at `target` for every TCP endpoint registered (ept_lookup), one (name, port) per
    distinct port, at most `max_ports`; with `interfaces`, only for those (ept_map), as also when a
    mapper refuses the enumeration."""
    found: list[tuple[str, int]] = []

    async def body(conv: Conversation) -> Outcome:
        async def talk(stream: Stream) -> Outcome:
            if interfaces is not None:
                found.extend(await _map_all(conv, stream, interfaces))
            else:
                await _bind(conv, stream)
                try:
                    registered = await _enumerate(conv, stream)
                except ProtocolError as exc:
                    if not str(exc).startswith("fault"):
                        raise
                    conv.note("ept_lookup", str(exc))  # refused: ask for the interfaces that matter
                    found.extend(await _map_all(conv, stream, INTERFACES, bound=True))
                else:
                    found.extend(dynamic_ports(registered, target.port, max_ports))
            for name in dict.fromkeys(n for n, _port in found):
                conv.note(f"rpc:{name}", ",".join(str(port) for n, port in found if n == name))
            conv.endpoints = tuple(found)
            listed = " ".join(f"{n}:{p}" for n, p in found) or "no TCP endpoint registered"
            return conv.ok(f"endpoint mapper answered: {listed}")

        return await connected(conv, resolved, target.port, timeout, attempts, talk)

    outcome = await converse("DCE/RPC", deadline(timeout, attempts), body, target.local)
    return EpmAnswer(outcome, outcome.endpoints if outcome.state is State.OPEN else ())


async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
    """The `rpc-epm` check: the mapper's Outcome, with the registered ports as ("rpc:<name>", port)."""
    return (await lookup(resolved, target, timeout, attempts)).outcome


async def resolve_endpoints(
    resolved: Resolved, target: Target, timeout: float, attempts: int = 3
) -> list[tuple[str, int]]:
    """(interface name, dynamic TCP port) for each interface of INTERFACES the mapper registered; empty
    when the mapper could not be asked. `lookup` gives the same list and the mapper's Outcome from one
    conversation, which is what a scheduler wants (probe the ports right after, and only once)."""
    return list((await lookup(resolved, target, timeout, attempts)).endpoints)
