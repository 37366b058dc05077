"""The service as a real uvicorn process on loopback: its HTTP endpoints, a promtool-clean exposition, and a
prompt stop on SIGTERM."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import Listeners
from tests.lab.metrics import metric_families, promtool_check_metrics
from tests.lab.organisations import EX1_PORTS, loopback_org
from tests.lab.service import Service, serve_args, start_service


@pytest.fixture
def service(tmp_path: Path, listeners: Listeners) -> Iterator[Service]:
    inv = loopback_org("127.0.33.", servers=2)
    # EX1 answers on every port but 2525; EX2 and the DC answer nothing (refused)
    for port in EX1_PORTS:
        if port != 2525:
            listeners.open("127.0.33.1", port)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(inv))
    svc = start_service(
        serve_args(
            file, source="observer.test", interval=2, timeout=0.5, state_file=tmp_path / "state.sqlite"
        )
    )
    yield svc
    svc.proc.terminate()
    svc.proc.wait(10)


def test_metrics_pass_promtool_and_carry_each_paths_state(service: Service) -> None:
    response = service.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    promtool_check_metrics(response.text)
    families = metric_families(response.text)
    up = {(s.labels["target"], s.labels["port"]): s.value for s in families["exchange_path_up"].samples}
    assert up[("ex1.loop.test", "443")] == 1.0
    assert up[("ex1.loop.test", "2525")] == 0.0
    assert up[("dc1.loop.test", "389")] == 0.0
    state = {
        (s.labels["target"], s.labels["port"], s.labels["state"]): s.value
        for s in families["exchange_path_state"].samples
    }
    assert state[("ex1.loop.test", "2525", "refused")] == 1.0
    assert state[("ex1.loop.test", "2525", "filtered")] == 0.0
    sample = families["exchange_path_up"].samples[0]
    assert set(sample.labels) == {
        "source",
        "source_site",
        "target",
        "target_site",
        "target_role",
        "port",
        "proto",
        "service",
        "kind",
        "family",  # the inventory gives an IPv4 address: the path is its IPv4 one
    }
    assert sample.labels["family"] == "ipv4"
    for name in (
        "exchange_probes",
        "exchange_probe_lag_seconds",
        "exchange_inventory_members",
        "exchange_build_info",
        "exchange_path_connect_seconds",
        "exchange_path_last_probe_timestamp_seconds",
    ):
        assert name in families, name
    members = {
        (s.labels["kind"], s.labels["site"]): s.value for s in families["exchange_inventory_members"].samples
    }
    assert members == {("exchange", "S"): 2.0, ("domain_controller", "S"): 1.0}


def test_metrics_are_gzipped_when_asked(service: Service) -> None:
    with httpx.stream("GET", service.base + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10) as r:
        assert r.headers.get("content-encoding") == "gzip"
        body = b"".join(r.iter_raw())
    assert b"exchange_path_up{" in gzip.decompress(body)
    with httpx.stream("GET", service.base + "/metrics", headers={"Accept-Encoding": "identity"}) as plain:
        assert "content-encoding" not in plain.headers
        # streamed block by block (never one whole-body join), so chunked, without a length
        assert plain.headers.get("transfer-encoding") == "chunked" and "content-length" not in plain.headers
        text = b"".join(plain.iter_raw())
    assert b"exchange_path_up{" in text
    # the same series either way
    unzipped = gzip.decompress(body)
    series = {line.rsplit(b" ", 1)[0] for line in text.splitlines() if line and not line.startswith(b"#")}
    zipped = {line.rsplit(b" ", 1)[0] for line in unzipped.splitlines() if line and not line.startswith(b"#")}
    assert {s for s in series if s.startswith(b"exchange_path")} == {
        s for s in zipped if s.startswith(b"exchange_path")
    }


def test_paths_api_health_ready_landing_and_openapi(service: Service) -> None:
    rows = service.get("/api/v1/paths").json()
    row = next(r for r in rows if r["target"] == "ex1.loop.test" and r["port"] == 2525)
    assert {
        k: row[k]
        for k in ("source", "target_site", "target_role", "proto", "service", "required", "state", "evidence")
    } == {
        "source": "observer.test",
        "target_site": "S",
        "target_role": "mailbox",
        "proto": "tcp",
        "service": "smtp-transport",
        "required": True,
        "state": "refused",
        "evidence": "ECONNREFUSED",
    }
    assert row["last_probe"].endswith("+00:00") and isinstance(row["rtt_seconds"], float)
    refused = service.get("/api/v1/paths", params={"state": "refused", "target": "ex1.loop.test"}).json()
    assert [r["port"] for r in refused] == [2525]
    assert service.get("/api/v1/paths", params={"state": "bogus"}).status_code == 422
    assert service.get("/-/healthy").text == "Healthy\n"
    assert service.get("/-/ready").status_code == 200
    landing = service.get("/").text
    assert 'href="metrics"' in landing and "observer.test" in landing
    spec = service.get("/openapi.json").json()
    assert "/api/v1/paths" in spec["paths"]
    assert service.get("/docs").status_code == 200


def test_sigterm_stops_the_service_promptly(service: Service) -> None:
    started = time.monotonic()
    service.proc.terminate()
    assert service.proc.wait(10) == 0
    assert time.monotonic() - started < 8
