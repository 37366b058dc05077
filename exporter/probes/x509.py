"""Certificates: just enough DER to read an X.509 certificate's validity and names, and RFC 6125 name
matching against them."""

from __future__ import annotations

import calendar
import ipaddress
from dataclasses import dataclass

from exporter.probes.conversation import clean


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    not_after: float | None
    names: tuple[str, ...]  # subjectAltName DNS names and IPs; the subject CN when there is no SAN
    ips: tuple[str, ...]

    def matches(self, name: str) -> bool:
        """RFC 6125 matching: exact, or one wildcard that is the whole left-most label."""
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None:
            return str(ip) in self.ips
        wanted = name.lower().rstrip(".")
        for pattern in self.names:
            pattern = pattern.lower().rstrip(".")
            if pattern == wanted:
                return True
            if pattern.startswith("*.") and "." in wanted:
                host, rest = wanted.split(".", 1)
                if host and rest == pattern[2:]:
                    return True
        return False


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("DER element overruns")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _tlv(data, start)
        out.append(element)
        start = element[2]
    return out


def _der_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime YYMMDDHHMM[SS]Z
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    parts = (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14] or "0")
    return float(calendar.timegm(tuple(int(p) for p in parts)))


_OID_SAN = bytes.fromhex("551d11")
_OID_CN = bytes.fromhex("550403")


def certificate_facts(der: bytes) -> CertificateFacts:
    """Validity end and names of an X.509 certificate; a certificate we cannot read yields no facts."""
    try:
        _tag, start, end = _tlv(der, 0)
        _tag, start, end = _tlv(der, start)  # tbsCertificate
        fields = _children(der, start, end)
        if fields and fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        validity, subject = fields[3], fields[4]
        times = _children(der, validity[1], validity[2])
        not_after = _der_time(times[1][0], der[times[1][1] : times[1][2]])
        names: list[str] = []
        ips: list[str] = []
        for field in fields[6:]:
            if field[0] != 0xA3:  # [3] extensions
                continue
            _t, s, e = _tlv(der, field[1])
            for _et, es, ee in _children(der, s, e):
                parts = _children(der, es, ee)
                if der[parts[0][1] : parts[0][2]] != _OID_SAN:
                    continue
                _ot, os_, oe = _tlv(der, parts[-1][1])  # extnValue OCTET STRING -> GeneralNames
                for gtag, gs, ge in _children(der, os_, oe):
                    if gtag == 0x82:
                        names.append(der[gs:ge].decode("ascii", "replace"))
                    elif gtag == 0x87:
                        ips.append(str(ipaddress.ip_address(der[gs:ge])))
        if not names and not ips:
            for _st, ss, se in _children(der, subject[1], subject[2]):
                for _at, as_, ae in _children(der, ss, se):
                    oid, value = _children(der, as_, ae)[:2]
                    if der[oid[1] : oid[2]] == _OID_CN:
                        names.append(der[value[1] : value[2]].decode("utf-8", "replace"))
        return CertificateFacts(not_after, tuple(clean(n, 100) for n in names[:20]), tuple(ips[:20]))
    except (ValueError, IndexError, UnicodeError):
        return CertificateFacts(None, (), ())
