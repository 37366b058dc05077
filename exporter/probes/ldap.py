"""LDAP probes: an anonymous rootDSE read on 389/3268, and the same over TLS on 636/3269.

The exchange is hand-rolled over our own stream (messages BER-encoded with ldap3's RFC 4511 classes and
pyasn1) rather than run through ldap3's synchronous client: the connect is classified like every other
probe (ldap3 hides the errno), each message is bounded, and the whole probe is cancellable. Details:
dnsHostName (and whether it is the target), isGlobalCatalogReady, isSynchronized, the DC's clock skew;
for TLS also the certificate expiry and whether chain and name verify.
"""

from __future__ import annotations

import calendar
import contextlib
import secrets
import time

from ldap3 import BASE, DEREF_NEVER
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp, UnbindRequest
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]

from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
    MAX_READ,
    Conversation,
    ProtocolError,
    Stream,
    connect,
    converse,
    deadline,
    first_bytes,
)
from exporter.probes.outcome import Outcome
from exporter.probes.tls import Trust, start_tls

ROOTDSE_ATTRIBUTES = ("dnsHostName", "isGlobalCatalogReady", "isSynchronized", "currentTime")
RESULT_NAMES = {
    0: "success",
    1: "operationsError",
    2: "protocolError",
    8: "strongerAuthRequired",
    53: "unwillingToPerform",
}


def _message(message_id: int, kind: str, operation: object) -> bytes:
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    message["protocolOp"] = ProtocolOp().setComponentByName(kind, operation)
    return bytes(encoder.encode(message))


def rootdse_request(message_id: int) -> bytes:
    request = search_operation(
        "", "(objectClass=*)", BASE, DEREF_NEVER, list(ROOTDSE_ATTRIBUTES), 0, 0, False,
        auto_escape=False, auto_encode=False,
    )  # fmt: skip
    return _message(message_id, "searchRequest", request)


def unbind_request(message_id: int) -> bytes:
    return _message(message_id, "unbindRequest", UnbindRequest(""))


async def read_message(stream: Stream) -> bytes:
    """One BER-framed LDAPMessage, never more than MAX_READ bytes."""
    head = await stream.read_exactly(2)
    if head[0] != 0x30:
        raise ProtocolError(f"not an LDAPMessage: {first_bytes(head + await stream.more())}")
    length = head[1]
    header = head
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ProtocolError(f"BER length of {count} bytes: {first_bytes(head)}")
        raw = await stream.read_exactly(count)
        header += raw
        length = int.from_bytes(raw, "big")
    if length > MAX_READ:
        raise ProtocolError(f"a {length}-byte LDAP message (limit {MAX_READ})")
    return header + await stream.read_exactly(length)


def _generalized_time(text: str) -> float:
    return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))


def _decode(data: bytes) -> tuple[int, str, object]:
    try:
        message, _rest = decoder.decode(data, asn1Spec=LDAPMessage())
        operation = message["protocolOp"]
        return int(message["messageID"]), operation.getName(), operation.getComponent()
    except (PyAsn1Error, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"{type(exc).__name__} decoding {first_bytes(data)}") from None


async def _rootdse(conv: Conversation, stream: Stream, target: Target) -> Outcome:
    message_id = 1 + secrets.randbelow(2**31 - 2)
    conv.step = "reading the rootDSE"
    sent = time.time()
    await stream.send(rootdse_request(message_id))
    values: dict[str, str] = {}
    result: int | None = None
    for _ in range(16):
        data = await read_message(stream)
        got_id, kind, operation = _decode(data)
        if got_id == 0 and kind == "extendedResp":  # notice of disconnection
            raise ProtocolError("the server sent a notice of disconnection")
        if got_id != message_id:
            raise ProtocolError(f"reply to message {got_id}, not {message_id}")
        if kind == "searchResEntry":
            for attribute in operation["attributes"]:  # type: ignore[index]
                if len(attribute["vals"]):
                    values[str(attribute["type"]).lower()] = bytes(attribute["vals"][0]).decode(
                        "utf-8", "replace"
                    )
        elif kind == "searchResDone":
            result = int(operation["resultCode"])  # type: ignore[index]
            break
        elif kind != "searchResRef":
            raise ProtocolError(f"unexpected {kind}")
    else:
        raise ProtocolError("no searchResDone after 16 messages")
    received = time.time()
    with contextlib.suppress(OSError):  # the answer is in; a peer that closed first changes nothing
        await stream.send(unbind_request(message_id + 1))
    conv.note("ldap_result", RESULT_NAMES.get(result, str(result)))
    if result != 0:
        return conv.ok(f"rootDSE search refused: {RESULT_NAMES.get(result, result)}")
    host = values.get("dnshostname", "")
    if host:
        conv.note("dns_host_name", host)
        if target.name:
            conv.note(
                "name_match", "yes" if host.lower().rstrip(".") == target.name.lower().rstrip(".") else "no"
            )
    for attribute, key in (("isglobalcatalogready", "gc_ready"), ("issynchronized", "synchronized")):
        if attribute in values:
            conv.note(key, values[attribute])
    if "currenttime" in values:
        conv.note("current_time", values["currenttime"])
        try:
            skew = _generalized_time(values["currenttime"]) - (sent + received) / 2
            conv.note("clock_skew", f"{skew:+.1f}s")
        except ValueError:
            conv.note("clock_skew", "unreadable")
    summary = f"rootDSE of {host or 'unnamed DSA'}"
    if "isglobalcatalogready" in values:
        summary += f", GC ready {values['isglobalcatalogready']}"
    if "issynchronized" in values:
        summary += f", synchronized {values['issynchronized']}"
    return conv.ok(summary)


def rootdse_check(tls: bool = False, cafile: str | None = None) -> Check:
    """The rootDSE check, in plain LDAP (389, 3268) or LDAPS (636, 3269) with `cafile` as the trust."""

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        async def body(conv: Conversation) -> Outcome:
            async def open_plain() -> Stream | Outcome:
                return await connect(conv, resolved, target.port, timeout, attempts)

            stream = await open_plain()
            if tls and not isinstance(stream, Outcome):
                stream = await start_tls(
                    conv, stream, open_plain, target.name or resolved.host, Trust.of(cafile)
                )
            if isinstance(stream, Outcome):
                return stream
            return await _rootdse(conv, stream, target)

        return await converse("LDAP", deadline(timeout, attempts), body, target.local)

    return check


check_ldap = rootdse_check(tls=False)
check_ldaps = rootdse_check(tls=True)
