"""The running service speaking the real protocols to a real Samba AD DC: protocol health in the metrics,
certificate expiry, and the DC's dynamic RPC ports (from its endpoint mapper) probed as paths of their own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.lab.metrics import metric_families, promtool_check_metrics
from tests.lab.samba import loopback_alias
from tests.lab.samba_probe_dc import DC_FQDN, DC_IP, ProbeDC
from tests.lab.service import Service, serve_args, start_service
from tests.lab.tls import LabPki
from tests.lab.waiting import wait_until


@pytest.fixture(scope="module")
def dc_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("proto-dc")
    pki = LabPki.create(work / "tls", DC_FQDN, DC_IP)
    inventory = work / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "organisation": "Probe",
                "domain_controllers": [
                    {"name": "DC1", "fqdn": DC_FQDN, "address": DC_IP, "site": "HQ", "global_catalog": True}
                ],
            }
        )
    )
    with loopback_alias(DC_IP):
        dc = ProbeDC(DC_IP, work, pki).start()
        try:
            svc = start_service(
                serve_args(
                    inventory,
                    "--probe.ca-file",
                    str(pki.ca_file),
                    source="monitor.probe.example.test",
                    interval=3,
                    timeout=1,
                    attempts=2,
                    state_file="",
                )
            )
            try:
                yield svc
            finally:
                svc.proc.terminate()
                svc.proc.wait(10)
        finally:
            dc.stop()


def rows(svc: Service) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = svc.get("/api/v1/paths").json()
    return result


def probed(current: list[dict[str, Any]]) -> set[str]:
    return {r["service"] for r in current if r["state"] is not None}


def wait_for(svc: Service, services: set[str], timeout: float = 40.0) -> list[dict[str, Any]]:
    """The paths once every one of `services` has been probed."""

    def all_probed() -> list[dict[str, Any]] | None:
        current = rows(svc)
        return current if services <= probed(current) else None

    return wait_until(all_probed, timeout, 0.3, message=lambda: sorted(probed(rows(svc))))


def test_dc_protocols_answer_through_the_service(dc_service: Service) -> None:
    current = wait_for(dc_service, {"rpc:drsuapi", "rpc:netlogon", "ldaps", "cldap"})
    by_key = {(r["port"], r["proto"]): r for r in current}
    for port, proto, check in [
        (53, "udp", "dns"),
        (53, "tcp", "dns-tcp"),
        (88, "udp", "kerberos"),
        (88, "tcp", "kerberos-tcp"),
        (389, "udp", "cldap"),
        (389, "tcp", "ldap-rootdse"),
        (636, "tcp", "ldaps"),
        (3268, "tcp", "gc"),
        (3269, "tcp", "gc-ssl"),
        (445, "tcp", "smb"),
        (135, "tcp", "rpc-epm"),
    ]:
        row = by_key[(port, proto)]
        assert (row["check"], row["state"], row["details"].get("protocol")) == (check, "open", "ok"), row
    assert by_key[(88, "udp")]["details"]["krb_error"] == "KDC_ERR_PREAUTH_REQUIRED"
    assert "GC" in by_key[(389, "udp")]["details"]["dc_flags"].split("|")
    # the DC's dynamic RPC ports, found through its endpoint mapper, are paths of their own
    dynamic = {r["service"]: r for r in current if r["service"].startswith("rpc:")}
    assert set(dynamic) == {"rpc:drsuapi", "rpc:netlogon", "rpc:samr"}  # every port the mapper lists
    assert all(
        r["state"] == "open" and r["port"] >= 1024 and r["kind"] == "exchange-dc" for r in dynamic.values()
    )
    # no NTP server runs in this lab DC: the honest answer is an ICMP port-unreachable, i.e. refused
    assert by_key[(123, "udp")]["state"] == "refused"


def test_protocol_health_and_certificate_expiry_are_metrics_promtool_accepts(dc_service: Service) -> None:
    wait_for(dc_service, {"rpc:drsuapi", "ldaps"})
    text = dc_service.get("/metrics").text
    promtool_check_metrics(text)
    families = metric_families(text)
    protocol = {s.labels["check"]: s.value for s in families["exchange_protocol_up"].samples}
    for check in (
        "dns",
        "dns-tcp",
        "kerberos",
        "kerberos-tcp",
        "cldap",
        "ldap-rootdse",
        "ldaps",
        "gc",
        "gc-ssl",
        "smb",
        "rpc-epm",
    ):
        assert protocol[check] == 1.0, check
    assert protocol["ntp"] == 0.0
    expiry = {
        s.labels["port"]: s.value for s in families["exchange_tls_cert_expiry_timestamp_seconds"].samples
    }
    assert set(expiry) >= {"636", "3269"} and all(value > time.time() for value in expiry.values())


def test_dynamic_rpc_ports_are_service_labels_of_their_own(dc_service: Service) -> None:
    wait_for(dc_service, {"rpc:drsuapi"})
    families = metric_families(dc_service.get("/metrics").text)
    services = {s.labels["service"]: s.value for s in families["exchange_path_up"].samples}
    assert services["rpc:drsuapi"] == 1.0 and services["rpc:netlogon"] == 1.0 and services["rpc-epm"] == 1.0
