"""Hostile and broken peers against every protocol probe: each gets a clear verdict within the deadline,
memory stays bounded, and a healthy probe running beside them is not delayed."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import uvloop

from exporter.probes import cldap, dns, http, kerberos, ldap, ntp, rpc, smb, smtp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import deadline
from exporter.probes.outcome import Outcome, State
from tests.lab import hostile

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PEER = Resolved(socket.AF_INET, HOST)
TIMEOUT, ATTEMPTS = 0.4, 2
BUDGET = deadline(TIMEOUT, ATTEMPTS)  # 1.3 s

TCP: dict[str, Check] = {
    "dns-tcp": dns.check_tcp,
    "kerberos-tcp": kerberos.check_tcp,
    "ldap-rootdse": ldap.check_ldap,
    "ldaps": ldap.check_ldaps,
    "smtp": smtp.check,
    "https-health:owa": http.health_check("owa"),
    "rpc-epm": rpc.check,
    "smb": smb.check,
}
UDP: dict[str, Check] = {
    "dns": dns.check_udp,
    "kerberos": kerberos.check_udp,
    "cldap": cldap.check,
    "ntp": ntp.check,
}

Run = dict[str, tuple[Outcome, float]]


async def against(behaviour: hostile.Behaviour, checks: dict[str, Check] = TCP) -> Run:
    """Every check at once against one server with `behaviour`: name -> (outcome, seconds taken)."""
    async with hostile.serve(behaviour) as port:
        return await _all(checks, port)


async def _all(checks: dict[str, Check], port: int) -> Run:
    async def one(name: str, check: Check) -> tuple[str, tuple[Outcome, float]]:
        started = time.monotonic()
        outcome = await check(PEER, Target(HOST, port, name, "ex01.lab.test"), TIMEOUT, ATTEMPTS)
        return name, (outcome, time.monotonic() - started)

    return dict(await asyncio.gather(*(one(name, check) for name, check in checks.items())))


def verdicts(run: Run) -> dict[str, tuple[State, str | None, str]]:
    return {name: (o.state, dict(o.details).get("protocol"), o.evidence) for name, (o, _t) in run.items()}


def slowest(run: Run) -> float:
    return max(took for _o, took in run.values())


TLS_FAILED = "TLS failed (TLS handshake (unverified)): WRONG_VERSION_NUMBER"


async def test_ten_megabyte_banner_is_a_bad_answer_read_in_bounded_memory() -> None:
    # the flooding peer runs in its own process, so only the prober's memory is traced here
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lab.hostile", "flood", HOST, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert peer.stdout is not None
        port = int(await peer.stdout.readline())
        tracemalloc.start()
        try:
            run = await _all(TCP, port)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        peer.kill()
        await peer.wait()
    twos = "b'" + "2" * 40 + "'"
    assert verdicts(run) == {
        "dns-tcp": (State.OPEN, "bad", f"not DNS: FormError parsing {twos}..."),
        "kerberos-tcp": (State.OPEN, "bad", "not Kerberos: length prefix 842150450 (limit 65536): b'2222'"),
        "ldap-rootdse": (State.OPEN, "bad", f"not LDAP: not an LDAPMessage: {twos}"),
        "ldaps": (State.OPEN, "bad", TLS_FAILED),
        "smtp": (State.OPEN, "bad", f"not SMTP: no end of line within 4096 bytes: {twos}"),
        "https-health:owa": (State.OPEN, "bad", TLS_FAILED),
        "rpc-epm": (State.OPEN, "bad", "not DCE/RPC: not DCE/RPC v5: b'2222222222222222'"),
        "smb": (State.OPEN, "bad", f"not SMB: not a NetBIOS session message: {twos}"),
    }
    assert slowest(run) < 0.5
    # ten connections (the TLS probes retry unverified), 10 MB offered on each: ~110 KiB held per connection
    assert peak < 2_000_000, f"peak {peak} bytes"


async def test_peer_that_never_speaks_reads_open_and_silent_at_the_deadline() -> None:
    hung_up: list[float] = []
    async with hostile.serve(hostile.silent_until_closed(hung_up)) as port:
        run = await _all(TCP, port)
        await asyncio.sleep(0.05)
        assert len(hung_up) == len(TCP)  # every probe hung up once it had its verdict
    steps = {
        "dns-tcp": "DNS peer gave no complete answer within 1.3s (waiting for the DNS reply)",
        "kerberos-tcp": "Kerberos peer gave no complete answer within 1.3s (waiting for the KDC's reply)",
        "ldap-rootdse": "LDAP peer gave no complete answer within 1.3s (reading the rootDSE)",
        "ldaps": "LDAP peer gave no complete answer within 1.3s (TLS handshake)",
        "smtp": "SMTP peer gave no complete answer within 1.3s (waiting for the banner)",
        "https-health:owa": "HTTP peer gave no complete answer within 1.3s (TLS handshake)",
        "rpc-epm": "DCE/RPC peer gave no complete answer within 1.3s (binding to the endpoint mapper)",
        "smb": "SMB peer gave no complete answer within 1.3s (waiting for the NEGOTIATE response)",
    }
    assert verdicts(run) == {name: (State.OPEN, "silent", text) for name, text in steps.items()}
    assert min(t for _o, t in run.values()) > BUDGET - 0.05 and slowest(run) < BUDGET + 0.2


#: a well-formed start of each protocol's answer, so the parser keeps waiting for more
SLOW_STARTS = {
    "dns-tcp": (b"\x01\x00\x12\x34", "waiting for the DNS reply"),
    "kerberos-tcp": (b"\x00\x00\x01\x00\x7e", "waiting for the KDC's reply"),
    "ldap-rootdse": (b"\x30\x82\x01\x00\x02", "reading the rootDSE"),
    "ldaps": (b"\x16\x03\x03\x01\x00\x02", "TLS handshake"),
    "smtp": (b"220 mail.lab.test ESMTP", "waiting for the banner"),
    "https-health:owa": (b"\x16\x03\x03\x01\x00\x02", "TLS handshake"),
    "rpc-epm": (b"\x05\x00\x0c\x03\x10\x00\x00\x00", "binding to the endpoint mapper"),
    "smb": (b"\x00\x00\x01\x00\xfeSMB", "waiting for the NEGOTIATE response"),
}
PROTOCOL = {
    "dns-tcp": "DNS",
    "kerberos-tcp": "Kerberos",
    "ldap-rootdse": "LDAP",
    "ldaps": "LDAP",
    "smtp": "SMTP",
}
PROTOCOL |= {"https-health:owa": "HTTP", "rpc-epm": "DCE/RPC", "smb": "SMB"}


async def test_slowloris_at_one_byte_a_second_is_cut_off_at_the_deadline() -> None:
    async def one(name: str) -> tuple[str, tuple[Outcome, float]]:
        start, _step = SLOW_STARTS[name]
        async with hostile.serve(hostile.slowloris(start, gap=1.0)) as port:
            return (await _all({name: TCP[name]}, port)).popitem()

    run = dict(await asyncio.gather(*(one(name) for name in TCP)))
    assert verdicts(run) == {
        name: (State.OPEN, "silent", f"{PROTOCOL[name]} peer gave no complete answer within 1.3s ({step})")
        for name, (_start, step) in SLOW_STARTS.items()
    }
    assert slowest(run) < BUDGET + 0.2


async def test_peer_speaking_another_protocol_is_named_in_the_evidence() -> None:
    run = await against(hostile.wrong_protocol())
    ssh = "b'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\\r\\n'"
    assert verdicts(run) == {
        # DNS over TCP reads "SS" as a 21331-byte length and waits for the rest: nothing to tell earlier
        "dns-tcp": (
            State.OPEN,
            "silent",
            "DNS peer gave no complete answer within 1.3s (waiting for the DNS reply)",
        ),
        "kerberos-tcp": (State.OPEN, "bad", "not Kerberos: length prefix 1397966893 (limit 65536): b'SSH-'"),
        "ldap-rootdse": (State.OPEN, "bad", f"not LDAP: not an LDAPMessage: {ssh}"),
        "ldaps": (State.OPEN, "bad", TLS_FAILED),
        "smtp": (State.OPEN, "bad", f"not SMTP: {ssh}"),
        "https-health:owa": (State.OPEN, "bad", TLS_FAILED),
        "rpc-epm": (State.OPEN, "bad", "not DCE/RPC: not DCE/RPC v5: b'SSH-2.0-OpenSSH_'"),
        "smb": (State.OPEN, "bad", f"not SMB: not a NetBIOS session message: {ssh}"),
    }


async def test_reset_right_after_the_handshake_reads_open_and_closed() -> None:
    run = await against(hostile.reset)
    steps = {name: step for name, (_start, step) in SLOW_STARTS.items()}
    assert verdicts(run) == {
        name: (State.OPEN, "closed", f"ECONNRESET after connect ({step})") for name, step in steps.items()
    }


async def test_tls_answered_with_garbage_is_a_bad_tls_verdict() -> None:
    run = await against(
        hostile.garbage_after_hello, {"ldaps": TCP["ldaps"], "https": TCP["https-health:owa"]}
    )
    assert verdicts(run) == {
        "ldaps": (State.OPEN, "bad", TLS_FAILED),
        "https": (State.OPEN, "bad", TLS_FAILED),
    }
    for outcome, _took in run.values():
        assert dict(outcome.details)["tls_verify"] == "failed: WRONG_VERSION_NUMBER"


async def test_udp_garbage_and_oversized_datagrams_are_bad_answers() -> None:
    for behaviour, first in (
        (hostile.udp_garbage, "b'\\x17\\x00garbage"),
        (hostile.udp_huge, "b'\\xff\\xff"),
    ):
        async with hostile.serve_udp(behaviour) as port:
            run = await _all(UDP, port)
        for name, (outcome, took) in run.items():
            got = (outcome.state, dict(outcome.details)["protocol"])
            assert got == (State.OPEN, "bad") and took < 0.2, (name, outcome)
            assert first in outcome.evidence and len(outcome.evidence) <= 200


async def test_udp_silence_is_filtered_only_after_every_attempt() -> None:
    async with hostile.serve_udp(hostile.udp_silent) as port:
        run = await _all(UDP, port)
    what = {"dns": "DNS", "kerberos": "Kerberos", "cldap": "CLDAP", "ntp": "NTP"}
    for name, (outcome, took) in run.items():
        assert (outcome.state, outcome.evidence, outcome.attempts) == (
            State.FILTERED,
            f"no reply to 2 {what[name]} requests of 0.4s",
            2,
        )
        assert 0.8 <= took < 1.0


async def test_closed_udp_port_on_loopback_reads_refused_for_every_udp_check() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
    run = await _all(UDP, port)
    for outcome, took in run.values():
        assert (outcome.state, outcome.evidence) == (
            State.REFUSED,
            f"ECONNREFUSED (ICMP type 3 code 3 from {HOST})",
        )
        assert took < 0.1


async def test_closed_and_unroutable_tcp_ports_keep_the_network_verdicts() -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
    run = await _all(TCP, port)
    assert {name: (o.state, o.evidence) for name, (o, _t) in run.items()} == {
        name: (State.REFUSED, "ECONNREFUSED") for name in TCP
    }


async def test_healthy_probe_is_not_delayed_by_hostile_peers_beside_it() -> None:
    healthy = hostile.scripted(
        b"220 mx.lab.test ESMTP\r\n",
        [(b"EHLO", b"250-mx.lab.test\r\n250 SIZE 1000\r\n"), (b"QUIT", b"221 bye\r\n")],
    )
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    async with hostile.serve(healthy) as good:
        tick = asyncio.create_task(ticker())
        storm = asyncio.gather(
            against(hostile.flood()),
            against(hostile.slowloris()),
            against(hostile.silent),
            against(hostile.reset),
        )
        await asyncio.sleep(0.05)  # the storm is under way
        started = time.monotonic()
        outcome = await smtp.check(PEER, Target(HOST, good, "smtp", "mx.lab.test"), TIMEOUT, ATTEMPTS)
        took = time.monotonic() - started
        await storm
        tick.cancel()
    assert (outcome.state, outcome.evidence, dict(outcome.details)["starttls"]) == (
        State.OPEN,
        "220 mx.lab.test ESMTP",
        "absent",
    )
    assert took < 0.2
    assert max(lags) < 0.1


def test_hostile_peers_get_the_same_verdicts_on_uvloop() -> None:
    """The engine runs on uvloop: its sock_connect, start_tls and stream limits must behave the same."""

    async def scenario() -> list[Run]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind((HOST, 0))
            closed = holder.getsockname()[1]
        async with hostile.serve_udp(hostile.udp_silent) as quiet:
            udp = await asyncio.gather(_all(UDP, closed), _all(UDP, quiet))
        tcp = await asyncio.gather(against(hostile.flood()), against(hostile.reset), against(hostile.silent))
        return [*tcp, *udp]

    flood, reset, silent, refused, quiet = uvloop.run(scenario())
    icmp = f"ECONNREFUSED (ICMP type 3 code 3 from {HOST})"
    assert {name: (o.state, o.evidence) for name, (o, _t) in refused.items()} == {
        name: (State.REFUSED, icmp) for name in UDP
    }
    assert {name: o.state for name, (o, _t) in quiet.items()} == {name: State.FILTERED for name in UDP}
    assert {name: verdicts(flood)[name][:2] for name in TCP} == {name: (State.OPEN, "bad") for name in TCP}
    assert {name: verdicts(reset)[name][:2] for name in TCP} == {name: (State.OPEN, "closed") for name in TCP}
    assert {name: verdicts(silent)[name][:2] for name in TCP} == {
        name: (State.OPEN, "silent") for name in TCP
    }
    assert slowest(silent) < BUDGET + 0.2


@pytest.mark.parametrize("name", sorted(TCP))
async def test_tcp_check_never_raises_on_a_bad_address(name: str) -> None:
    # an address family the socket cannot take: our own error, reported, not raised
    outcome = await TCP[name](Resolved(socket.AF_INET6, "127.0.0.1"), Target(HOST, 1, name, ""), 0.2, 1)
    assert outcome.state is State.LOCAL_ERROR and outcome.evidence
