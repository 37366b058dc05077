"""CLDAP "LDAP ping" probe (389/udp): the DC locator's own question, answered with the DC's Netlogon facts.

Request (MS-ADTS 6.3.3): a searchRequest, base "", scope base, filter
(&(DnsDomain=<domain>)(NtVer=\\06\\00\\00\\00)), attributes [Netlogon], BER-encoded with ldap3's RFC 4511
classes and pyasn1 (ldap3 itself has no UDP transport). The reply's NETLOGON_SAM_LOGON_RESPONSE_EX gives
the DC's flags (PDC|GC|LDAP|DS|KDC...), its site and the site the DC thinks we are in. A domain the DC does
not serve yields an entry with no attributes: the port is still OPEN, and ("netlogon", "empty") says so.
"""

from __future__ import annotations

import secrets
import struct
import uuid

from ldap3 import BASE, DEREF_NEVER
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]

from exporter.probes import udp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
    Conversation,
    ProtocolError,
    converse,
    deadline,
    first_bytes,
    parent_zone,
)
from exporter.probes.outcome import Outcome

NT_VERSION = 0x00000006  # NETLOGON_NT_VERSION_5 | NETLOGON_NT_VERSION_5EX
LOGON_SAM_LOGON_RESPONSE_EX = 23
LOGON_SAM_USER_UNKNOWN_EX = 25

#: DS_FLAG bits (MS-ADTS 6.3.1.2), in the order they are reported
DS_FLAGS = (
    (0x00000001, "PDC"),
    (0x00000004, "GC"),
    (0x00000008, "LDAP"),
    (0x00000010, "DS"),
    (0x00000020, "KDC"),
    (0x00000040, "TIMESERV"),
    (0x00000080, "CLOSEST"),
    (0x00000100, "WRITABLE"),
    (0x00000200, "GOOD_TIMESERV"),
    (0x00000400, "NDNC"),
    (0x00000800, "SELECT_SECRET_DOMAIN_6"),
    (0x00001000, "FULL_SECRET_DOMAIN_6"),
    (0x00002000, "WS"),
    (0x00004000, "DS_8"),
    (0x00008000, "DS_9"),
    (0x00010000, "DS_10"),
    (0x00020000, "KEY_LIST"),
    (0x20000000, "DNS_CONTROLLER"),
    (0x40000000, "DNS_DOMAIN"),
    (0x80000000, "DNS_FOREST"),
)

NAMES = (
    "forest",
    "domain",
    "dc_host",
    "netbios_domain",
    "netbios_computer",
    "user",
    "dc_site",
    "client_site",
)


def _escape(value: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in value)


def ldap_ping(domain: str, message_id: int) -> bytes:
    """BER of the LDAP ping for `domain`."""
    ldap_filter = f"(&(DnsDomain={domain})(NtVer={_escape(struct.pack('<I', NT_VERSION))}))"
    request = search_operation(
        "", ldap_filter, BASE, DEREF_NEVER, ["Netlogon"], 0, 0, False, auto_escape=False, auto_encode=False
    )
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    message["protocolOp"] = ProtocolOp().setComponentByName("searchRequest", request)
    return bytes(encoder.encode(message))


def dc_flags(flags: int) -> str:
    return "|".join(name for bit, name in DS_FLAGS if flags & bit) or "none"


def _name(blob: bytes, pos: int) -> tuple[str, int]:
    """One DNS-compressed name (RFC 1035 4.1.4) from the Netlogon blob: (name, position after it)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if pos >= len(blob):
            raise ValueError("name runs past the end")
        length = blob[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(blob):
                raise ValueError("truncated pointer")
            jumps += 1
            if jumps > 16:
                raise ValueError("pointer loop")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | blob[pos + 1]
            continue
        if length & 0xC0:
            raise ValueError("bad label length")
        labels.append(blob[pos + 1 : pos + 1 + length].decode("utf-8", "replace"))
        pos += 1 + length
        if len(labels) > 64:
            raise ValueError("too many labels")
    return ".".join(labels), (end if end >= 0 else pos)


def parse_netlogon(blob: bytes) -> dict[str, str]:
    """The facts of a NETLOGON_SAM_LOGON_RESPONSE_EX: opcode, flags, domain GUID, names and sites."""
    if len(blob) < 24:
        raise ValueError(f"{len(blob)} bytes is too short")
    opcode, _sbz, flags = struct.unpack_from("<HHI", blob)
    if opcode not in (LOGON_SAM_LOGON_RESPONSE_EX, LOGON_SAM_USER_UNKNOWN_EX):
        raise ValueError(f"opcode {opcode} is not a SAM logon response EX")
    facts = {
        "netlogon_opcode": str(opcode),
        "dc_flags": dc_flags(flags),
        "domain_guid": str(uuid.UUID(bytes_le=blob[8:24])),
    }
    pos = 24
    for key in NAMES:
        value, pos = _name(blob, pos)
        facts[key] = value
    return facts


def _answer(conv: Conversation, data: bytes, message_id: int, domain: str) -> Outcome:
    rest = data
    entry_seen = False
    result: str | None = None
    try:
        for _ in range(8):  # an entry and a done, and nothing sane sends more
            if not rest:
                break
            message, rest = decoder.decode(rest, asn1Spec=LDAPMessage())
            if int(message["messageID"]) != message_id:
                raise ProtocolError(f"reply to message {int(message['messageID'])}, not {message_id}")
            operation = message["protocolOp"]
            kind = operation.getName()
            if kind == "searchResEntry":
                entry_seen = True
                for attribute in operation.getComponent()["attributes"]:
                    if str(attribute["type"]).lower() == "netlogon" and len(attribute["vals"]):
                        for key, value in parse_netlogon(bytes(attribute["vals"][0])).items():
                            conv.note(key, value)
            elif kind == "searchResDone":
                result = str(operation.getComponent()["resultCode"])
            else:
                raise ProtocolError(f"unexpected {kind}")
    except ProtocolError:
        raise
    except (PyAsn1Error, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ProtocolError(f"{type(exc).__name__} decoding {first_bytes(data)}") from None
    if result is not None:
        conv.note("ldap_result", result)
    if conv.detail("dc_flags") is not None:
        conv.note("netlogon", "ok")
        return conv.ok(f"LDAP ping: {conv.detail('dc_host')} flags {conv.detail('dc_flags')}")
    if entry_seen or result is not None:
        conv.note("netlogon", f"empty: the DC does not serve {domain or 'the root domain'}")
        return conv.ok(f"LDAP ping answered without Netlogon data for {domain!r} ({result or 'no result'})")
    raise ProtocolError(f"no search result in {first_bytes(data)}")


def ldap_ping_check(domain: str | None = None) -> Check:
    """The CLDAP check; `domain` overrides the DNS domain derived from the target name."""

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        name = domain or parent_zone(target.name)
        message_id = 1 + secrets.randbelow(2**31 - 2)
        request = ldap_ping(name, message_id)

        async def body(conv: Conversation) -> Outcome:
            reply = await udp.request(conv, resolved, target.port, request, timeout, attempts, "CLDAP")
            if isinstance(reply, Outcome):
                return reply
            return _answer(conv, reply.data, message_id, name)

        return await converse("CLDAP", deadline(timeout, attempts), body, target.local)

    return check


check = ldap_ping_check()
