"""What a caller can and cannot make the service do: no open proxy, bounded requests, rate limits,
and Alertmanager's inhibition of per-port pages while a whole host is unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Listeners, free_port
from tests.lab.check_command import run_check
from tests.lab.metrics import samples
from tests.lab.monitoring import Alertmanager, Webhook, alertmanager_config
from tests.lab.organisations import loopback_org
from tests.lab.service import Service, serve_args, start_service

EXPECTED_ROUTES = {
    "/metrics",
    "/-/healthy",
    "/-/ready",
    "/api/v1/paths",
    "/api/v1/changes",
    "/api/v1/verdict",
    "/api/v1/mesh",
    "/api/v1/mesh/changes",
    "/api/v1/sd",
    "/matrix",
    "/matrix/fragment",
    "/",
    "/docs",
    "/docs/oauth2-redirect",
    "/openapi.json",
    "/redoc",
}


def loopback_service(workdir: Path, prefix: str, *extra: str) -> Service:
    """A real service probing a one-server loopback organisation, with this module's usual settings."""
    inventory = workdir / "inv.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org(prefix, servers=1)))
    return start_service(serve_args(inventory, *extra, source="o", interval=5, timeout=0.3, state_file=""))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("hardening")
    svc = loopback_service(work, "127.0.41.")
    yield svc
    svc.proc.terminate()
    svc.proc.wait(10)


def probes_total(svc: Service) -> float:
    return sum(samples(svc, "exchange_probes_total").values())


def test_no_endpoint_probes_an_address_a_caller_names(service: Service, listeners: Listeners) -> None:
    """blackbox_exporter's /probe?target= is an open proxy by design; this service has no such thing."""
    from exporter.flags import build_parser  # noqa: F401 - the CLI is the only way to add targets

    spec = service.get("/openapi.json").json()
    assert set(spec["paths"]) <= EXPECTED_ROUTES
    for path, operations in spec["paths"].items():
        assert set(operations) == {"get"}, path  # nothing takes a body
    bait = listeners.open("127.0.41.99")
    before = probes_total(service)
    for url in (
        f"/probe?target=127.0.41.99:{bait}&module=tcp_connect",
        "/api/v1/paths?target=127.0.41.99",
        f"/api/v1/mesh?target=127.0.41.99:{bait}",
        "/matrix?target=127.0.41.99",
    ):
        assert service.get(url).status_code in (200, 404, 422), url
    time.sleep(0.5)
    listeners.sockets[-1].settimeout(0.1)
    with pytest.raises(TimeoutError):
        listeners.sockets[-1].accept()  # nobody connected to the bait
    assert probes_total(service) >= before


def test_a_past_moment_without_prometheus_is_not_found_and_a_bad_one_is_refused(service: Service) -> None:
    missing = service.get("/api/v1/mesh", params={"at": "1796443800"})
    assert missing.status_code == 404 and "--prometheus.url" in missing.text
    assert service.get("/matrix", params={"at": "2026-12-05T02:10:00Z"}).status_code == 404
    assert service.get("/api/v1/mesh/changes", params={"at": "tomorrow"}).status_code == 422
    assert service.get("/matrix", params={"at": "2026-12-05 soon"}).status_code == 422


def test_oversized_requests_are_refused_cleanly(service: Service) -> None:
    assert httpx.get(service.base + "/api/v1/paths?target=" + "x" * 5000, timeout=5).status_code == 414
    big = {"X-Filler": "y" * 40_000}
    assert httpx.get(service.base + "/api/v1/paths", headers=big, timeout=5).status_code in (431, 400)
    posted = httpx.post(service.base + "/api/v1/paths", content=b"z" * 100_000, timeout=5)
    assert posted.status_code == 413
    assert httpx.post(service.base + "/api/v1/paths", timeout=5).status_code == 405


def test_a_client_hammering_the_api_is_rate_limited_but_scrapes_go_on(tmp_path: Path) -> None:
    service = loopback_service(tmp_path, "127.0.48.", "--web.api-rate-limit", "1")
    try:
        _hammer(service)
    finally:
        service.proc.terminate()
        service.proc.wait(10)


def _hammer(service: Service) -> None:
    # one request per second per client, bursts of three: ten at once must be cut off
    codes = [httpx.get(service.base + "/api/v1/verdict", timeout=5).status_code for _ in range(10)]
    assert 429 in codes and codes[0] == 200
    limited = httpx.get(service.base + "/api/v1/verdict", timeout=5)
    assert limited.status_code in (200, 429)
    if limited.status_code == 429:
        assert limited.headers["retry-after"] == "1"
    assert httpx.get(service.base + "/metrics", timeout=5).status_code == 200  # its own budget
    time.sleep(1.5)
    assert httpx.get(service.base + "/api/v1/verdict", timeout=5).status_code == 200  # refilled


def test_host_unreachable_inhibits_the_per_port_pages(tmp_path: Path) -> None:
    """Real Alertmanager with the shipped example: when ExchangeTargetUnreachable fires for a host, the
    per-port ExchangeRequiredPathNewlyBlocked alerts to that host are not sent; to another host they are."""
    hook = Webhook().start()
    am = Alertmanager(tmp_path, free_port(), alertmanager_config(hook, group_wait="1s", group_interval="2s"))
    try:
        common = {"source": "ex0.lab.test", "source_site": "HQ", "target_site": "Branch", "instance": "a:1"}

        def alert(name: str, target: str, severity: str, **extra: str) -> dict[str, Any]:
            return {"labels": {"alertname": name, "severity": severity, "target": target, **common, **extra}}

        alerts = [
            alert("ExchangeTargetUnreachable", "ex1.lab.test", "critical"),
            alert("ExchangeRequiredPathNewlyBlocked", "ex1.lab.test", "critical", port="25"),
            alert("ExchangeRequiredPathNewlyBlocked", "ex1.lab.test", "critical", port="2525"),
            alert("ExchangeRequiredPathNewlyBlocked", "ex2.lab.test", "critical", port="25"),
        ]
        response = httpx.post(am.url + "/api/v2/alerts", json=alerts, timeout=10)
        assert response.status_code == 200, response.text
        note = hook.wait_for(lambda n: n.receiver_path == "/pager", timeout=30)
        time.sleep(3)
        sent = {
            (a["labels"]["alertname"], a["labels"]["target"], a["labels"].get("port"))
            for n in hook.notifications
            for a in n.body["alerts"]
        }
        assert sent == {
            ("ExchangeTargetUnreachable", "ex1.lab.test", None),
            ("ExchangeRequiredPathNewlyBlocked", "ex2.lab.test", "25"),
        }
        assert note.body["groupLabels"] == {"source_site": "HQ", "target_site": "Branch"}
    finally:
        am.stop()
        hook.stop()


def test_openapi_fuzzing_finds_no_server_errors_or_schema_violations(tmp_path: Path) -> None:
    """schemathesis against the live service's own OpenAPI description: every documented operation, with
    generated valid and invalid parameters; any 5xx or a response that breaks its schema fails. (The
    rate limit is raised so that the fuzzer exercises the operations rather than the limiter.)"""
    import subprocess
    import sys

    service = loopback_service(tmp_path, "127.0.47.", "--web.api-rate-limit", "100000")

    # a too-long query is refused with 414 before validation: a rejection, like 400 and 422
    (tmp_path / "schemathesis.toml").write_text(
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "404", "413", "414", "422"]\n'
    )
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(cli),
            "run",
            f"{service.base}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "2026",
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    service.proc.terminate()
    service.proc.wait(10)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]


def test_check_prints_directory_text_literally_not_as_terminal_markup(tmp_path: Path) -> None:
    """`check`'s table is drawn with rich, whose [markup] in a site or organisation name would restyle the
    output, open a hyperlink, or (an unmatched closing tag) crash the command."""
    org = loopback_org("127.0.59.", servers=1)
    org["organisation"] = "[/bold] [red]Org"
    org["servers"][0]["site"] = "[link=http://evil.example]HQ[/link] [/]"
    result = run_check(org, tmp_path, "--output", "table", "--timeout", "0.2", "--connect-only", columns=400)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr  # nothing listens there: required paths refused
    assert "site [link=http://evil.example]HQ[/link] [/]):" in result.stdout
    assert "[/bold] [red]Org from observer.test" in result.stdout
    assert "\x1b]8;" not in result.stdout  # no OSC 8 hyperlink came out of the name
