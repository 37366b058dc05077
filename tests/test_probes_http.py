"""The health-page probes against real HTTPS servers (uvicorn): good, expired and wrong-name certificates."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import pytest_asyncio
import uvicorn

from exporter.probes import http
from exporter.probes.contract import Resolved, Target
from exporter.probes.outcome import Outcome, State
from exporter.probes.registry import CHECKS
from tests.conftest import free_port
from tests.lab import hostile
from tests.lab.tls import LabPki

HOST = "127.0.0.1"
NAME = "ex01.lab.test"
PEER = Resolved(socket.AF_INET, HOST)
TIMEOUT, ATTEMPTS = 1.0, 2

# one event loop for the module, so the three servers start once (uvicorn takes ~0.2 s to stop)
pytestmark = pytest.mark.asyncio(loop_scope="module")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: lower-cased path -> (status, body), as Exchange's front end would answer
PAGES = {
    "/owa/healthcheck.htm": (200, f"200 OK<br/>{NAME}"),
    "/ews/healthcheck.htm": (200, "200 OK<br/>ex02.lab.test"),  # a load balancer sent us elsewhere
    "/ecp/healthcheck.htm": (503, "<html>Service Unavailable</html>"),
    "/mapi/healthcheck.htm": (200, "<html>IIS default page</html>"),
    "/oab/healthcheck.htm": (200, "200 OK<br/>" + "x" * 10_000_000),  # a 10 MB "server name"
}


class Site:
    """An ASGI app serving PAGES and remembering the Host headers it saw."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        headers = dict(scope["headers"])
        self.hosts.append(headers.get(b"host", b"").decode())
        status, body = PAGES.get(scope["path"].lower(), (404, "not found"))
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]}
        )
        await send({"type": "http.response.body", "body": body.encode()})


class Https:
    def __init__(self, site: Site, pki: LabPki, kind: str) -> None:
        self.port = free_port(HOST)
        files = pki.servers[kind]
        config = uvicorn.Config(
            site, host=HOST, port=self.port, ssl_certfile=str(files.cert), ssl_keyfile=str(files.key),
            log_level="error", lifespan="off",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Https:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return LabPki.create(tmp_path_factory.mktemp("https-tls"), NAME, HOST)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(pki: LabPki) -> AsyncIterator[tuple[Site, dict[str, int]]]:
    app = Site()
    async with (
        Https(app, pki, "good") as good,
        Https(app, pki, "expired") as expired,
        Https(app, pki, "wrong_name") as wrong,
    ):
        yield app, {"good": good.port, "expired": expired.port, "wrong_name": wrong.port}


def details(outcome: Outcome) -> dict[str, str]:
    return dict(outcome.details)


async def probe(pki: LabPki, vdir: str, port: int) -> Outcome:
    check = http.health_check(vdir, cafile=str(pki.ca_file))
    return await check(PEER, Target(HOST, port, f"https-health:{vdir}", NAME), TIMEOUT, ATTEMPTS)


async def test_healthy_page_names_the_target_over_a_verified_certificate(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    app, ports = site
    seen = len(app.hosts)
    outcome = await probe(pki, "owa", ports["good"])
    assert (outcome.state, outcome.evidence) == (State.OPEN, f"HTTP 200 OK, {NAME}")
    got = details(outcome)
    assert (got["http_status"], got["health_fqdn"], got["fqdn_match"], got["health"]) == (
        "200",
        NAME,
        "yes",
        "healthy",
    )
    assert (got["tls_verify"], got["tls_name"], got["protocol"]) == ("ok", "match", "ok")
    assert outcome.cert_expiry == pki.servers["good"].not_after.timestamp()
    assert app.hosts[seen:] == [f"{NAME}:{ports['good']}"]  # Host is the target's name, not the address


async def test_page_naming_another_server_reads_answered_by_another_server(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    outcome = await probe(pki, "ews", site[1]["good"])
    got = details(outcome)
    assert (outcome.evidence, got["fqdn_match"], got["health"]) == (
        "HTTP 200 OK, ex02.lab.test",
        "no",
        "answered by another server",
    )


async def test_inactive_component_503_reads_open_and_unhealthy(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    outcome = await probe(pki, "ecp", site[1]["good"])
    got = details(outcome)
    assert (outcome.state, outcome.evidence) == (State.OPEN, "HTTP 503 Service Unavailable")
    assert (got["http_status"], got["health"], got["protocol"]) == ("503", "unhealthy", "ok")


async def test_200_without_the_health_text_is_unhealthy(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    outcome = await probe(pki, "mapi", site[1]["good"])
    assert outcome.evidence == "HTTP 200 OK: b'<html>IIS default page</html>'"
    assert details(outcome)["health"] == "unhealthy"


async def test_ten_megabyte_body_is_read_only_to_the_limit(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    started = time.monotonic()
    outcome = await probe(pki, "oab", site[1]["good"])
    got = details(outcome)
    assert time.monotonic() - started < 0.5
    assert (outcome.state, got["fqdn_match"], got["health_fqdn"]) == (State.OPEN, "no", "x" * 197 + "...")


async def test_expired_certificate_still_yields_the_page_and_the_past_expiry(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    outcome = await probe(pki, "owa", site[1]["expired"])
    got = details(outcome)
    assert (outcome.state, got["health"], got["tls_name"]) == (State.OPEN, "healthy", "match")
    assert got["tls_verify"] == "failed: certificate has expired"
    assert outcome.cert_expiry == pki.servers["expired"].not_after.timestamp() < time.time()


async def test_wrong_name_certificate_reads_name_mismatch(
    pki: LabPki, site: tuple[Site, dict[str, int]]
) -> None:
    outcome = await probe(pki, "owa", site[1]["wrong_name"])
    got = details(outcome)
    assert (outcome.state, got["health"]) == (State.OPEN, "healthy")
    assert got["tls_verify"] == f"failed: Hostname mismatch, certificate is not valid for '{NAME}'."
    assert (got["tls_name"], got["cert_names"]) == ("mismatch", "other.invalid")


async def test_plain_http_on_the_tls_port_is_a_bad_tls_answer() -> None:
    plain = hostile.wrong_protocol(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    async with hostile.serve(plain) as port:
        outcome = await http.health_check("owa")(
            PEER, Target(HOST, port, "https-health:owa", NAME), TIMEOUT, 2
        )
    got = details(outcome)
    assert (outcome.state, got["protocol"]) == (State.OPEN, "bad")
    assert outcome.evidence == "TLS failed (TLS handshake (unverified)): WRONG_VERSION_NUMBER"


async def test_every_exchange_vdir_has_a_check_in_the_registry() -> None:
    assert {name for name in CHECKS if name.startswith("https-health:")} == {
        f"https-health:{v}" for v in ("owa", "ecp", "ews", "mapi", "rpc", "oab", "activesync", "autodiscover")
    }
