"""What each firewall action looks like to the prober, through a real router namespace with nftables, on
each of the three event loops (uvloop, the selector loop, and the Proactor's API without fd callbacks)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from exporter.engine.scheduler import Engine
from exporter.probes.contract import Target
from exporter.probes.outcome import Outcome, State
from exporter.probes.tcp import probe_tcp
from tests.lab.loops import run_on
from tests.lab.netns import RoutedLab

pytestmark = pytest.mark.netns


class Collect:
    def __init__(self) -> None:
        self.outcomes: dict[int, Outcome] = {}

    def record(self, index: int, outcome: Outcome, wall: float) -> None:
        self.outcomes[index] = outcome


# Over a zero-latency veth the ICMP error for the first SYN can arrive while connect() still holds the
# socket lock; Linux then drops it (TcpExtLockDroppedIcmps, seen for IPv6 here) and only the SYN
# retransmitted after the 1 s RTO gets an error delivered. Real networks have latency; the lab gets the
# same answer by giving each attempt longer than one RTO.
ATTEMPT_TIMEOUT = 1.3


def run_once(
    targets: list[Target], loop_kind: str, timeout: float = ATTEMPT_TIMEOUT, attempts: int = 3
) -> dict[int, Outcome]:
    sink = Collect()
    engine = Engine(targets, sink, timeout=timeout, attempts=attempts, once=True, tick=0.02)
    run_on(loop_kind, engine.run())
    # the connect path the loop allows: callbacks where it has fd callbacks, sock_connect tasks where not
    assert engine._fd_callbacks is (loop_kind != "no-fd-callbacks")
    return sink.outcomes


FIREWALL = [
    # (port, nftables rule in the router, state, evidence for IPv4, evidence for IPv6)
    (8001, None, State.OPEN, "", ""),
    (
        8002,
        "tcp dport 8002 drop",
        State.FILTERED,
        "no answer to 3 SYN attempts of 1.3s",
        "no answer to 3 SYN attempts of 1.3s",
    ),
    (8003, "tcp dport 8003 reject with tcp reset", State.REFUSED, "ECONNREFUSED", "ECONNREFUSED"),
    (8004, "tcp dport 8004 reject with icmpx admin-prohibited", State.UNREACHABLE, "EHOSTUNREACH", "EACCES"),
    (
        8005,
        "tcp dport 8005 reject with icmpx host-unreachable",
        State.UNREACHABLE,
        "EHOSTUNREACH",
        "EHOSTUNREACH",
    ),
    (8006, "tcp dport 8006 reject with icmpx no-route", State.UNREACHABLE, "ENETUNREACH", "ENETUNREACH"),
    (8099, None, State.REFUSED, "ECONNREFUSED", "ECONNREFUSED"),  # nothing listens: the host's own RST
]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_each_firewall_action_reads_as_its_own_state(lab: RoutedLab, family: str, loop_kind: str) -> None:
    for _port, rule, *_ in FIREWALL:
        if rule:
            lab.block(rule)
    address = lab.dst4 if family == "ipv4" else lab.dst6
    targets = [Target(address, port) for port, *_ in FIREWALL]
    outcomes = run_once(targets, loop_kind)
    got = {targets[i].port: (o.state, o.evidence) for i, o in outcomes.items()}
    want = {port: (state, ev4 if family == "ipv4" else ev6) for port, _rule, state, ev4, ev6 in FIREWALL}
    assert got == want
    # a drop is declared filtered only after three silent attempts; answers come at the first
    assert outcomes[1].attempts == 3
    assert outcomes[0].attempts == 1 and outcomes[2].attempts == 1


def test_drop_rule_reads_as_filtered_with_the_coroutine_probe(lab: RoutedLab, loop_kind: str) -> None:
    lab.block("tcp dport 8002 drop")
    outcome = run_on(loop_kind, probe_tcp((lab.dst4, 8002), socket.AF_INET, timeout=0.3, attempts=3))
    assert (outcome.state, outcome.attempts) == (State.FILTERED, 3)
    open_outcome = run_on(loop_kind, probe_tcp((lab.dst4, 8001), socket.AF_INET, timeout=0.3))
    assert open_outcome.state is State.OPEN and open_outcome.rtt is not None


def test_a_silent_first_attempt_then_an_answer_is_not_filtered(lab: RoutedLab, loop_kind: str) -> None:
    """PortQry semantics: one lost SYN is not a block. The drop is lifted during the second attempt."""
    lab.block("tcp dport 8001 drop")

    async def scenario() -> dict[int, Outcome]:
        sink = Collect()
        engine = Engine([Target(lab.dst4, 8001)], sink, timeout=0.6, attempts=3, once=True, tick=0.02)
        runner = asyncio.ensure_future(engine.run())
        await asyncio.sleep(0.8)  # first attempt has timed out, the second is in flight
        await asyncio.to_thread(lab.flush)
        await runner
        return sink.outcomes

    outcome = run_on(loop_kind, scenario())[0]
    assert outcome.state is State.OPEN
    assert outcome.attempts in (2, 3)
