"""Kerberos probe (88/udp and 88/tcp): an AS-REQ without pre-authentication, answered by a KRB-ERROR.

A KDC answers such a request with KRB-ERROR (PREAUTH_REQUIRED for an existing principal,
C_PRINCIPAL_UNKNOWN, WRONG_REALM, RESPONSE_TOO_BIG over UDP...): every one of them means the KDC answered,
so the path is OPEN with ("krb_error", name). The error carries the KDC's clock, so the skew is measured
for free. The default principal is the target's own computer account (`DC1$` for dc1.contoso.com), which
exists on every DC and requires pre-authentication, so probes do not fill the DC's audit log with
unknown-principal failures. ASN.1 is encoded with pyasn1 (already a dependency through ldap3).
"""

from __future__ import annotations

import calendar
import secrets
import time

from pyasn1.codec.der import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]
from pyasn1.type import char, namedtype, tag, univ, useful  # type: ignore[import-untyped]

from exporter.probes import udp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
    MAX_READ,
    Conversation,
    ProtocolError,
    Stream,
    connected,
    converse,
    deadline,
    first_bytes,
    parent_zone,
)
from exporter.probes.outcome import Outcome

ERRORS = {
    1: "KDC_ERR_NAME_EXP",
    3: "KDC_ERR_BAD_PVNO",
    6: "KDC_ERR_C_PRINCIPAL_UNKNOWN",
    7: "KDC_ERR_S_PRINCIPAL_UNKNOWN",
    12: "KDC_ERR_POLICY",
    14: "KDC_ERR_ETYPE_NOSUPP",
    18: "KDC_ERR_CLIENT_REVOKED",
    23: "KDC_ERR_KEY_EXPIRED",
    24: "KDC_ERR_PREAUTH_FAILED",
    25: "KDC_ERR_PREAUTH_REQUIRED",
    37: "KRB_AP_ERR_SKEW",
    52: "KRB_ERR_RESPONSE_TOO_BIG",
    60: "KRB_ERR_GENERIC",
    68: "KDC_ERR_WRONG_REALM",
}

NT_PRINCIPAL = 1
NT_SRV_INST = 2
ETYPES = (18, 17, 23)  # aes256-cts-hmac-sha1-96, aes128-cts-hmac-sha1-96, rc4-hmac
AS_REQ_TAG = 0x6A
AS_REP_TAG = 0x6B
KRB_ERROR_TAG = 0x7E


def _ctx(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)


def _app(number: int) -> tag.TagSet:
    return univ.Sequence.tagSet.tagExplicitly(
        tag.Tag(tag.tagClassApplication, tag.tagFormatConstructed, number)
    )


def _field(name: str, number: int, kind: object, optional: bool = False) -> namedtype.NamedType:
    typed = kind.subtype(explicitTag=_ctx(number))  # type: ignore[attr-defined]
    return (namedtype.OptionalNamedType if optional else namedtype.NamedType)(name, typed)


class PrincipalName(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        _field("name-type", 0, univ.Integer()),
        _field("name-string", 1, univ.SequenceOf(componentType=char.GeneralString())),
    )


class KdcReqBody(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        _field("kdc-options", 0, univ.BitString()),
        _field("cname", 1, PrincipalName(), optional=True),
        _field("realm", 2, char.GeneralString()),
        _field("sname", 3, PrincipalName(), optional=True),
        _field("till", 5, useful.GeneralizedTime()),
        _field("nonce", 7, univ.Integer()),
        _field("etype", 8, univ.SequenceOf(componentType=univ.Integer())),
    )


class AsReq(univ.Sequence):  # type: ignore[misc]
    tagSet = _app(10)
    componentType = namedtype.NamedTypes(
        _field("pvno", 1, univ.Integer()),
        _field("msg-type", 2, univ.Integer()),
        _field("req-body", 4, KdcReqBody()),
    )


class KrbError(univ.Sequence):  # type: ignore[misc]
    tagSet = _app(30)
    componentType = namedtype.NamedTypes(
        _field("pvno", 0, univ.Integer()),
        _field("msg-type", 1, univ.Integer()),
        _field("ctime", 2, useful.GeneralizedTime(), optional=True),
        _field("cusec", 3, univ.Integer(), optional=True),
        _field("stime", 4, useful.GeneralizedTime()),
        _field("susec", 5, univ.Integer()),
        _field("error-code", 6, univ.Integer()),
        _field("crealm", 7, char.GeneralString(), optional=True),
        _field("cname", 8, PrincipalName(), optional=True),
        _field("realm", 9, char.GeneralString()),
        _field("sname", 10, PrincipalName()),
        _field("e-text", 11, char.GeneralString(), optional=True),
        _field("e-data", 12, univ.OctetString(), optional=True),
    )


def _fill_principal(principal: PrincipalName, name_type: int, *parts: str) -> None:
    principal["name-type"] = name_type
    names = principal["name-string"]
    for index, part in enumerate(parts):
        names[index] = part


def as_req(principal: str, realm: str, nonce: int) -> bytes:
    """DER of an AS-REQ for `principal@realm` to krbtgt/realm, with no PA-DATA."""
    request = AsReq()
    request["pvno"] = 5
    request["msg-type"] = 10
    body = request["req-body"]
    body["kdc-options"] = "'01000000100000010000000000000000'B"  # forwardable, renewable, canonicalize
    _fill_principal(body["cname"], NT_PRINCIPAL, principal)
    body["realm"] = realm
    _fill_principal(body["sname"], NT_SRV_INST, "krbtgt", realm)
    body["till"] = "20370913024805Z"
    body["nonce"] = nonce
    for index, etype in enumerate(ETYPES):
        body["etype"][index] = etype
    return bytes(encoder.encode(request))


def _kerberos_time(value: object) -> float:
    text = str(value).rstrip("Z")
    return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))


def _answer(conv: Conversation, data: bytes, sent_at: float) -> Outcome:
    if not data:
        raise ProtocolError("empty reply")
    if data[0] == AS_REP_TAG:
        conv.note("krb_reply", "AS-REP")
        return conv.ok("AS-REP: the principal does not require pre-authentication")
    if data[0] != KRB_ERROR_TAG:
        raise ProtocolError(f"neither KRB-ERROR nor AS-REP: {first_bytes(data)}")
    try:
        error, _rest = decoder.decode(data, asn1Spec=KrbError())
        code = int(error["error-code"])
        kdc_time = _kerberos_time(error["stime"]) + int(error["susec"]) / 1e6
        realm = str(error["realm"])
    except (PyAsn1Error, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"malformed KRB-ERROR ({type(exc).__name__}): {first_bytes(data)}") from None
    name = ERRORS.get(code, f"KRB_ERROR_{code}")
    conv.note("krb_error", name)
    conv.note("krb_error_code", str(code))
    conv.note("realm", realm)
    midpoint = time.time() - (time.monotonic() - sent_at) / 2
    conv.note("clock_skew", f"{kdc_time - midpoint:+.3f}s")
    return conv.ok(f"KRB-ERROR {code} {name}")


def _names(target: Target, principal: str | None, realm: str | None) -> tuple[str, str]:
    first = target.name.split(".", 1)[0] if target.name else ""
    who = principal or (f"{first.upper()[:15]}$" if first else "exchange-firewall-exporter")
    return who, (realm or parent_zone(target.name) or "WORKGROUP").upper()


def as_req_check(transport: str = "udp", principal: str | None = None, realm: str | None = None) -> Check:
    """The Kerberos check over "udp" or "tcp" (4-byte length prefix)."""

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        who, where = _names(target, principal, realm)
        request = as_req(who, where, secrets.randbelow(2**31))

        async def over_udp(conv: Conversation) -> Outcome:
            reply = await udp.request(conv, resolved, target.port, request, timeout, attempts, "Kerberos")
            if isinstance(reply, Outcome):
                return reply
            return _answer(conv, reply.data, time.monotonic() - reply.rtt)

        async def over_tcp(conv: Conversation) -> Outcome:
            async def talk(stream: Stream) -> Outcome:
                conv.step = "waiting for the KDC's reply"
                sent = time.monotonic()
                await stream.send(len(request).to_bytes(4, "big") + request)
                header = await stream.read_exactly(4)
                size = int.from_bytes(header, "big")
                if size > MAX_READ:
                    raise ProtocolError(f"length prefix {size} (limit {MAX_READ}): {first_bytes(header)}")
                return _answer(conv, await stream.read_exactly(size), sent)

            return await connected(conv, resolved, target.port, timeout, attempts, talk)

        conv_body = over_tcp if transport == "tcp" else over_udp
        return await converse("Kerberos", deadline(timeout, attempts), conv_body, target.local)

    return check


check_udp = as_req_check("udp")
check_tcp = as_req_check("tcp")
