"""DNS probe (53/udp and 53/tcp): an SOA query for the target's zone, built and parsed by dnspython.

Any well-formed response to our query means the service answered: NOERROR, NXDOMAIN, REFUSED and SERVFAIL
are all OPEN, with the rcode in the details. The zone is the target FQDN less its first label unless the
check is built with one.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.SOA

from exporter.probes import udp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
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


def _query(zone: str) -> dns.message.Message:
    return dns.message.make_query(zone, dns.rdatatype.SOA)


def _answer(conv: Conversation, query: dns.message.Message, wire: bytes, zone: str) -> Outcome:
    try:
        response = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        raise ProtocolError(f"{type(exc).__name__} parsing {first_bytes(wire)}") from None
    if not query.is_response(response):
        raise ProtocolError(f"reply does not answer our query (id {response.id}, expected {query.id})")
    rcode = dns.rcode.to_text(response.rcode())
    conv.note("rcode", rcode)
    conv.note("zone", zone)
    conv.note("authoritative", "yes" if response.flags & dns.flags.AA else "no")
    if response.flags & dns.flags.TC:
        conv.note("truncated", "yes")
    serial = ""
    for rrset in response.answer:
        for rdata in rrset:
            if isinstance(rdata, dns.rdtypes.ANY.SOA.SOA):
                serial = f", serial {rdata.serial}"
                conv.note("soa_mname", rdata.mname.to_text())
                conv.note("soa_serial", str(rdata.serial))
                break
    return conv.ok(f"SOA {zone}: {rcode}{serial}")


async def _over_udp(
    conv: Conversation, resolved: Resolved, target: Target, timeout: float, attempts: int, zone: str
) -> Outcome:
    query = _query(zone)
    reply = await udp.request(conv, resolved, target.port, query.to_wire(), timeout, attempts, "DNS")
    if isinstance(reply, Outcome):
        return reply
    return _answer(conv, query, reply.data, zone)


async def _over_tcp(
    conv: Conversation, resolved: Resolved, target: Target, timeout: float, attempts: int, zone: str
) -> Outcome:
    query = _query(zone)
    wire = query.to_wire()

    async def talk(stream: Stream) -> Outcome:
        conv.step = "waiting for the DNS reply"
        await stream.send(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(await stream.read_exactly(2), "big")
        return _answer(conv, query, await stream.read_exactly(size), zone)

    return await connected(conv, resolved, target.port, timeout, attempts, talk)


def soa_check(transport: str = "udp", zone: str | None = None) -> Check:
    """The DNS check over "udp" or "tcp"; `zone` overrides the zone derived from the target name."""
    over = _over_tcp if transport == "tcp" else _over_udp

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        name = zone or parent_zone(target.name) or "."

        async def body(conv: Conversation) -> Outcome:
            return await over(conv, resolved, target, timeout, attempts, name)

        return await converse("DNS", deadline(timeout, attempts), body, target.local)

    return check


check_udp = soa_check("udp")
check_tcp = soa_check("tcp")
