"""The probes' own wire formats and parsers, on crafted bytes: what a hostile answer cannot make them do."""

from __future__ import annotations

import datetime
import ssl
import struct
import uuid

import pytest
import trustme
from pyasn1.codec.der import decoder  # type: ignore[import-untyped]

from exporter.probes import cldap, kerberos, rpc, smb
from exporter.probes.conversation import clean, first_bytes, parent_zone
from exporter.probes.x509 import CertificateFacts, certificate_facts


def test_peer_text_is_printable_ascii_and_bounded() -> None:
    assert clean("220 ok\r\n\x1b[31mred\x00") == "220 ok???[31mred?"
    assert clean("é€") == "??"
    long = clean("x" * 10_000)
    assert len(long) == 200 and long.endswith("...")
    assert first_bytes(b"\x00SSH" + b"A" * 100) == "b'\\x00SSH" + "A" * 36 + "'..."


def test_zone_is_the_target_name_less_its_first_label() -> None:
    assert parent_zone("dc1.contoso.com.") == "contoso.com"
    assert parent_zone("dc1") == "" and parent_zone("") == ""


def test_certificate_facts_read_expiry_names_and_addresses_from_der() -> None:
    ca = trustme.CA()
    not_after = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    leaf = ca.issue_cert("ex01.lab.test", "*.mail.lab.test", "192.0.2.10", not_after=not_after)
    facts = certificate_facts(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))
    assert facts.not_after == not_after.timestamp()
    assert facts.names == ("ex01.lab.test", "*.mail.lab.test") and facts.ips == ("192.0.2.10",)


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("ex01.lab.test", True),
        ("EX01.LAB.TEST.", True),
        ("a.mail.lab.test", True),
        ("mail.lab.test", False),  # a wildcard never covers the bare domain
        ("a.b.mail.lab.test", False),  # nor more than one label
        ("192.0.2.10", True),
        ("192.0.2.11", False),
        ("ex02.lab.test", False),
    ],
)
def test_name_matching_follows_rfc_6125(name: str, matches: bool) -> None:
    facts = CertificateFacts(0.0, ("ex01.lab.test", "*.mail.lab.test"), ("192.0.2.10",))
    assert facts.matches(name) is matches


def test_unreadable_certificate_yields_no_facts_rather_than_an_error() -> None:
    assert certificate_facts(b"\x30\x84\xff\xff\xff\xff") == CertificateFacts(None, (), ())
    assert certificate_facts(b"") == CertificateFacts(None, (), ())


def _netlogon(names: bytes, flags: int = 0x11BD) -> bytes:
    return struct.pack("<HHI", 23, 0, flags) + uuid.UUID(int=1).bytes_le + names


def test_netlogon_response_names_follow_compression_pointers() -> None:
    names = (
        b"\x05probe\x07example\x04test\x00" + b"\xc0\x18" + b"\x03dc1\xc0\x18" + b"\x05PROBE\x00\x03DC1\x00"
    )
    names += b"\x00" + b"\x02HQ\x00" + b"\xc0\x41"
    facts = cldap.parse_netlogon(_netlogon(names))
    assert (facts["forest"], facts["domain"], facts["dc_host"]) == (
        "probe.example.test",
        "probe.example.test",
        "dc1.probe.example.test",
    )
    assert (facts["netbios_domain"], facts["user"], facts["dc_site"], facts["client_site"]) == (
        "PROBE",
        "",
        "HQ",
        "HQ",
    )
    assert facts["dc_flags"] == "PDC|GC|LDAP|DS|KDC|CLOSEST|WRITABLE|FULL_SECRET_DOMAIN_6"


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (b"\xc0\x18", "pointer loop"),  # points at itself
        (b"\x05probe", "name runs past the end"),
        (b"\xc0", "truncated pointer"),
        (b"\x45abc", "bad label length"),
    ],
)
def test_hostile_netlogon_names_are_rejected_not_followed(names: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        cldap.parse_netlogon(_netlogon(names))


def test_ldap_ping_carries_the_domain_and_ntver_5ex() -> None:
    wire = cldap.ldap_ping("contoso.com", 7)
    assert b"\x04\x09DnsDomain\x04\x0bcontoso.com" in wire
    assert b"\x04\x05NtVer\x04\x04\x06\x00\x00\x00" in wire and b"Netlogon" in wire


def test_as_req_is_an_application_10_request_without_padata() -> None:
    wire = kerberos.as_req("DC1$", "CONTOSO.COM", 12345)
    assert wire[0] == kerberos.AS_REQ_TAG
    request, rest = decoder.decode(wire, asn1Spec=kerberos.AsReq())
    assert rest == b"" and int(request["pvno"]) == 5 and int(request["msg-type"]) == 10
    body = request["req-body"]
    assert str(body["realm"]) == "CONTOSO.COM" and int(body["nonce"]) == 12345
    assert [str(n) for n in body["sname"]["name-string"]] == ["krbtgt", "CONTOSO.COM"]
    assert [int(e) for e in body["etype"]] == [18, 17, 23]


def test_epm_tower_port_is_read_big_endian_and_absent_without_a_tcp_floor() -> None:
    tower = rpc.tcp_tower(rpc.INTERFACES["drsuapi"])
    assert rpc.tower_port(tower) == 0
    with_port = tower.replace(b"\x01\x00\x07\x02\x00\x00\x00", b"\x01\x00\x07\x02\x00\xc0\x01")
    assert rpc.tower_port(with_port) == 49153
    assert rpc.tower_port(b"\x00\x00") is None


def test_ept_map_answer_announcing_too_many_towers_is_refused() -> None:
    stub = bytes(20) + struct.pack("<IIII", 1, 4, 0, 100_000)
    with pytest.raises(ValueError, match="100000 towers announced"):
        rpc.parse_ept_map(stub)


def lookup_stub(
    entries: list[tuple[uuid.UUID, int, str]], status: int, handle: bytes = b"\x01" * 20
) -> bytes:
    """An ept_lookup response as NDR lays it out: the entries (object, tower pointer, annotation), then
    the deferred towers, then the status."""
    body = handle + struct.pack("<IIII", len(entries), len(entries), 0, len(entries))
    for number, (_interface, _port, annotation) in enumerate(entries, start=1):
        text = annotation.encode() + b"\0"
        body += bytes(16) + struct.pack("<III", number, 0, len(text)) + text
        body += bytes(-len(body) % 4)
    for interface, port, _annotation in entries:
        tower = rpc.tcp_tower((interface, 1, 0)).replace(
            b"\x07\x02\x00\x00\x00", b"\x07\x02\x00" + port.to_bytes(2, "big")
        )
        body += struct.pack("<II", len(tower), len(tower)) + tower + bytes(-len(tower) % 4)
    return body + struct.pack("<I", status)


def test_ept_lookup_lists_every_tcp_registration_and_one_path_per_port_is_named() -> None:
    drs, lsa, exchange = (
        uuid.UUID("e3514235-4b06-11d1-ab04-00c04fc2dcd2"),
        uuid.UUID("12345778-1234-abcd-ef00-0123456789ab"),
        uuid.UUID("0a74ef1c-41a4-4e06-83ae-dc74fb1cdd53"),
    )
    stub = lookup_stub(
        [(lsa, 49668, "LSA"), (drs, 49668, "MS NT Directory DRS"), (exchange, 6001, "MS Exch")], 0
    )
    handle, entries, status = rpc.parse_ept_lookup(stub)
    assert (handle, status) == (b"\x01" * 20, 0)
    assert [(e.interface, e.port, e.annotation) for e in entries] == [
        (lsa, 49668, "LSA"),
        (drs, 49668, "MS NT Directory DRS"),
        (exchange, 6001, "MS Exch"),
    ]
    # one path per distinct port, named after its most telling interface; unknown ones by their UUID
    assert rpc.dynamic_ports(entries, 135, limit=16) == [("drsuapi", 49668), ("0a74ef1c", 6001)]
    assert rpc.dynamic_ports(entries, 135, limit=1) == [("drsuapi", 49668)]  # bounded
    assert rpc.dynamic_ports(entries, 6001, limit=16) == [("drsuapi", 49668)]  # never the mapper's own
    with pytest.raises(ValueError, match="malformed"):
        rpc.parse_ept_lookup(stub[:-10])


def test_ept_lookup_asks_for_every_element_from_the_handle_it_was_given() -> None:
    pdu = rpc.ept_lookup_pdu(7, b"\x02" * 20, max_entries=50)
    assert pdu[2] == rpc.PTYPE_REQUEST and struct.unpack_from("<H", pdu, 22)[0] == rpc.OPNUM_EPT_LOOKUP
    stub = pdu[24:]
    assert struct.unpack_from("<IIII", stub) == (
        0,
        0,
        0,
        1,
    )  # all elements, any object/interface, all versions
    assert stub[16:36] == b"\x02" * 20 and struct.unpack_from("<I", stub, 36)[0] == 50


def test_bind_asks_for_the_endpoint_mapper_over_ndr() -> None:
    pdu = rpc.bind_pdu()
    assert len(pdu) == 72 and pdu[2] == rpc.PTYPE_BIND
    assert uuid.UUID(bytes_le=pdu[32:48]) == rpc.EPM_INTERFACE[0]
    assert uuid.UUID(bytes_le=pdu[52:68]) == rpc.NDR[0]


def test_smb2_negotiate_offers_every_dialect_with_its_311_context() -> None:
    wire = smb.negotiate_request()
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    message = wire[4:]
    assert message[:4] == smb.SMB2_MAGIC
    size, count = struct.unpack_from("<HH", message, 64)
    assert (size, count) == (36, 5)
    assert struct.unpack_from("<5H", message, 100) == smb.DIALECTS
    offset, contexts = struct.unpack_from("<IH", message, 64 + 28)
    assert contexts == 1 and offset % 8 == 0 and struct.unpack_from("<H", message, offset)[0] == 1
