"""The SMTP probe against aiosmtpd (a real ESMTP server with STARTTLS) and against scripted refusals."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from aiosmtpd.controller import Controller

from exporter.probes import smtp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.outcome import Outcome, State
from tests.conftest import free_port
from tests.lab import hostile
from tests.lab.tls import LabPki

HOST = "127.0.0.1"
NAME = "mail.lab.test"
PEER = Resolved(socket.AF_INET, HOST)
TIMEOUT, ATTEMPTS = 1.0, 2


class Sink:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return LabPki.create(tmp_path_factory.mktemp("smtp-tls"), NAME, HOST)


def _controller(pki: LabPki, kind: str | None) -> Controller:
    tls = pki.server_context(kind) if kind else None
    controller = Controller(
        Sink(),
        hostname=HOST,
        port=free_port(HOST),
        server_hostname=NAME,
        tls_context=tls,
        require_starttls=False,
    )
    controller.start()
    return controller


@pytest.fixture(scope="module")
def servers(pki: LabPki) -> Iterator[dict[str, int]]:
    running = {kind: _controller(pki, kind) for kind in ("good", "expired", "wrong_name")}
    running["plain"] = _controller(pki, None)
    try:
        yield {kind: int(c.port) for kind, c in running.items()}
    finally:
        for controller in running.values():
            controller.stop()


def check_with(ca: Path) -> Check:
    return smtp.smtp_check(cafile=str(ca))


def details(outcome: Outcome) -> dict[str, str]:
    return dict(outcome.details)


async def test_starttls_server_reads_open_with_banner_offer_and_verified_certificate(
    pki: LabPki, servers: dict[str, int]
) -> None:
    outcome = await check_with(pki.ca_file)(
        PEER, Target(HOST, servers["good"], "smtp", NAME), TIMEOUT, ATTEMPTS
    )
    got = details(outcome)
    assert outcome.state is State.OPEN and outcome.evidence.startswith(f"220 {NAME} Python SMTP")
    assert got["banner"] == outcome.evidence
    assert (got["starttls"], got["tls_verify"], got["tls_name"], got["protocol"]) == (
        "offered",
        "ok",
        "match",
        "ok",
    )
    assert "STARTTLS" in got["extensions"].split(",")
    assert outcome.cert_expiry == pki.servers["good"].not_after.timestamp()
    assert outcome.attempts == 1


async def test_expired_certificate_is_reported_with_its_past_expiry(
    pki: LabPki, servers: dict[str, int]
) -> None:
    outcome = await check_with(pki.ca_file)(
        PEER, Target(HOST, servers["expired"], "smtp", NAME), TIMEOUT, ATTEMPTS
    )
    got = details(outcome)
    assert outcome.state is State.OPEN and got["protocol"] == "ok"
    assert got["tls_verify"] == "failed: certificate has expired"
    assert got["tls_name"] == "match"
    assert outcome.cert_expiry == pki.servers["expired"].not_after.timestamp() < time.time()


async def test_certificate_for_another_name_reads_name_mismatch(pki: LabPki, servers: dict[str, int]) -> None:
    outcome = await check_with(pki.ca_file)(
        PEER, Target(HOST, servers["wrong_name"], "smtp", NAME), TIMEOUT, ATTEMPTS
    )
    got = details(outcome)
    assert outcome.state is State.OPEN
    assert got["tls_verify"] == f"failed: Hostname mismatch, certificate is not valid for '{NAME}'."
    assert (got["tls_name"], got["cert_names"]) == ("mismatch", "other.invalid")


async def test_server_without_starttls_reads_open_with_starttls_absent(
    pki: LabPki, servers: dict[str, int]
) -> None:
    outcome = await smtp.check(PEER, Target(HOST, servers["plain"], "smtp", NAME), TIMEOUT, ATTEMPTS)
    got = details(outcome)
    assert (outcome.state, got["starttls"], got["protocol"]) == (State.OPEN, "absent", "ok")
    assert "tls_verify" not in got and outcome.cert_expiry is None


def test_starttls_verdicts_are_the_same_on_uvloop(pki: LabPki, servers: dict[str, int]) -> None:
    async def both() -> tuple[Outcome, Outcome]:
        check = check_with(pki.ca_file)
        good = await check(PEER, Target(HOST, servers["good"], "smtp", NAME), TIMEOUT, ATTEMPTS)
        expired = await check(PEER, Target(HOST, servers["expired"], "smtp", NAME), TIMEOUT, ATTEMPTS)
        return good, expired

    good, expired = uvloop.run(both())
    assert (details(good)["tls_verify"], good.cert_expiry) == (
        "ok",
        pki.servers["good"].not_after.timestamp(),
    )
    assert details(expired)["tls_verify"] == "failed: certificate has expired"
    assert expired.cert_expiry == pki.servers["expired"].not_after.timestamp()


async def test_421_banner_is_a_server_that_answered_and_refuses() -> None:
    banner = b"421 4.3.2 Service not available, closing transmission channel\r\n"
    async with hostile.serve(hostile.scripted(banner, [(b"QUIT", b"221 bye\r\n")])) as port:
        outcome = await smtp.check(PEER, Target(HOST, port, "smtp", NAME), TIMEOUT, ATTEMPTS)
    assert (outcome.state, outcome.evidence) == (
        State.OPEN,
        "421 4.3.2 Service not available, closing transmission channel",
    )
    assert (
        details(outcome)["smtp"] == "refusing: 421 4.3.2 Service not available, closing transmission channel"
    )


async def test_port_465_is_spoken_to_in_plain_smtp_first(pki: LabPki) -> None:
    # Exchange 2013+ Client Proxy on 465 is plain SMTP + STARTTLS: the probe must not wrap TLS first
    host = "127.0.80.5"
    controller = Controller(
        Sink(), hostname=host, port=465, server_hostname=NAME, tls_context=pki.server_context("good")
    )
    controller.start()
    try:
        check = check_with(pki.ca_file)
        outcome = await check(
            Resolved(socket.AF_INET, host), Target(host, 465, "smtp", NAME), TIMEOUT, ATTEMPTS
        )
    finally:
        controller.stop()
    got = details(outcome)
    assert (outcome.state, got["starttls"], got["tls_verify"], got["protocol"]) == (
        State.OPEN,
        "offered",
        "ok",
        "ok",
    )


async def test_garbage_after_starttls_reads_open_with_a_bad_tls_verdict() -> None:
    script = hostile.scripted(
        b"220 mx.lab.test ESMTP\r\n",
        [(b"EHLO", b"250-mx.lab.test\r\n250 STARTTLS\r\n"), (b"STARTTLS", b"220 go ahead\r\n")],
        then=hostile.garbage_after_hello,
    )
    async with hostile.serve(script) as port:
        outcome = await smtp.check(PEER, Target(HOST, port, "smtp", NAME), TIMEOUT, ATTEMPTS)
    got = details(outcome)
    assert (outcome.state, got["protocol"]) == (State.OPEN, "bad")
    assert outcome.evidence == "TLS failed (TLS handshake (unverified)): WRONG_VERSION_NUMBER"
    assert (got["starttls"], got["tls_verify"]) == ("offered", "failed: WRONG_VERSION_NUMBER")
