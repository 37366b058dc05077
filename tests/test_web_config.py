"""--web.config.file: real TLS with client certificates and bcrypt basic auth, against the real service."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme
import yaml

from exporter.errors import ConfigError
from exporter.outputs.webconfig import load_web_config
from tests.lab.organisations import loopback_org
from tests.lab.service import Service, serve_args, start_service

PASSWORD = "correct horse battery staple"  # a test credential, asserted never to leak


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, trustme.CA, trustme.CA]:
    workdir = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(workdir / "server.pem")
    )
    server_ca.cert_pem.write_to_path(str(workdir / "server-ca.pem"))
    client_ca.cert_pem.write_to_path(str(workdir / "client-ca.pem"))
    client_ca.issue_cert("prometheus").private_key_and_cert_chain_pem.write_to_path(
        str(workdir / "client.pem")
    )
    trustme.CA().issue_cert("mallory").private_key_and_cert_chain_pem.write_to_path(
        str(workdir / "rogue.pem")
    )
    return workdir, server_ca, client_ca


def start(tmp_path: Path, web: dict[str, object]) -> tuple[Service, Path]:
    file = tmp_path / "web.yml"
    file.write_text(yaml.safe_dump(web))
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org("127.0.40.", servers=1)))
    log = tmp_path / "service.log"
    args = serve_args(
        inventory, "--web.config.file", str(file), source="o", interval=5, timeout=0.3, state_file=""
    )
    return start_service(args, ready=None, scheme="https", log=log), log


@pytest.fixture
def mtls_service(pki: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path) -> Iterator[tuple[Service, Path]]:
    workdir, _server_ca, _client_ca = pki
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    svc, log = start(
        tmp_path,
        {
            "tls_server_config": {
                "cert_file": str(workdir / "server.pem"),
                "key_file": str(workdir / "server.pem"),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(workdir / "client-ca.pem"),
            },
            "basic_auth_users": {"prometheus": hashed},
        },
    )
    yield svc, log
    svc.proc.terminate()
    svc.proc.wait(10)


def client(workdir: Path, cert: str | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
    if cert:
        context.load_cert_chain(str(workdir / cert))
    return httpx.Client(verify=context, timeout=10)


def test_right_client_certificate_and_password_get_metrics(
    mtls_service: tuple[Service, Path], pki: tuple[Path, trustme.CA, trustme.CA]
) -> None:
    svc, _log = mtls_service
    with client(pki[0], "client.pem") as http:
        response = http.get(svc.base + "/metrics", auth=("prometheus", PASSWORD))
        assert response.status_code == 200 and "exchange_build_info" in response.text
        again = http.get(svc.base + "/api/v1/paths", auth=("prometheus", PASSWORD))  # cached check
        assert again.status_code == 200


def test_wrong_or_missing_password_is_refused(
    mtls_service: tuple[Service, Path], pki: tuple[Path, trustme.CA, trustme.CA]
) -> None:
    svc, _log = mtls_service
    with client(pki[0], "client.pem") as http:
        for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), None):
            response = http.get(svc.base + "/metrics", auth=auth)
            assert response.status_code == 401, auth
            assert response.headers["www-authenticate"].startswith("Basic ")
            assert "exchange_" not in response.text


def test_missing_or_foreign_client_certificate_is_refused_in_the_handshake(
    mtls_service: tuple[Service, Path], pki: tuple[Path, trustme.CA, trustme.CA]
) -> None:
    svc, _log = mtls_service
    for cert in (None, "rogue.pem"):
        with (
            client(pki[0], cert) as http,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            http.get(svc.base + "/metrics", auth=("prometheus", PASSWORD))


def test_healthy_needs_no_password_but_still_the_client_certificate(
    mtls_service: tuple[Service, Path], pki: tuple[Path, trustme.CA, trustme.CA]
) -> None:
    svc, log = mtls_service
    with client(pki[0], "client.pem") as http:
        assert http.get(svc.base + "/-/healthy").status_code == 200
        assert http.get(svc.base + "/-/ready").status_code == 401
    with (
        client(pki[0], None) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.get(svc.base + "/-/healthy")
    assert PASSWORD not in log.read_text()


def test_plain_http_to_a_tls_listener_gets_no_data(mtls_service: tuple[Service, Path]) -> None:
    svc, _log = mtls_service
    with pytest.raises(httpx.HTTPError):
        httpx.get(svc.base.replace("https://", "http://") + "/metrics", timeout=5)


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ({"basic_auth_users": {"u": "plaintext"}}, "is not a bcrypt hash"),
        (
            {"tls_server_config": {"cert_file": "/nonexistent.pem", "key_file": "/nonexistent.pem"}},
            "not found",
        ),
        ({"tls_server_confg": {}}, "unknown keys"),
        (
            {
                "tls_server_config": {
                    "cert_file": "SERVER",
                    "key_file": "SERVER",
                    "client_auth_type": "RequireAndVerifyClientCert",
                }
            },
            "needs client_ca_file",
        ),
    ],
)
def test_bad_web_config_is_a_clear_error_without_secrets(
    tmp_path: Path, pki: tuple[Path, trustme.CA, trustme.CA], web: dict[str, object], message: str
) -> None:
    text = yaml.safe_dump(web).replace("SERVER", str(pki[0] / "server.pem"))
    file = tmp_path / "web.yml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_web_config(file)
    assert "plaintext" not in str(err.value)


# ---- every exporter-toolkit key Python's ssl can honour is honoured; the others stop start-up ---------


def tls_config(workdir: Path, **extra: object) -> dict[str, object]:
    return {
        "tls_server_config": {
            "cert_file": str(workdir / "server.pem"),
            "key_file": str(workdir / "server.pem"),
            **extra,
        }
    }


def test_a_client_certificate_outside_client_allowed_sans_is_refused(
    pki: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    workdir, _server_ca, client_ca = pki
    client_ca.issue_cert("grafana").private_key_and_cert_chain_pem.write_to_path(str(workdir / "grafana.pem"))
    web = tls_config(
        workdir,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(workdir / "client-ca.pem"),
        client_allowed_sans=["prometheus", "prometheus-2"],
    )
    svc, log = start(tmp_path, web)
    try:
        with client(workdir, "client.pem") as allowed:  # signed by the CA, SAN prometheus: in
            assert allowed.get(svc.base + "/metrics").status_code == 200
        with client(workdir, "grafana.pem") as other, pytest.raises(httpx.TransportError):
            other.get(svc.base + "/metrics")  # signed by the same CA, SAN grafana: not in the list
    finally:
        svc.stop()
    assert "client certificate grafana is not in client_allowed_sans" in log.read_text()


def test_min_version_tls13_refuses_a_tls12_only_client_and_headers_are_added(
    pki: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    workdir = pki[0]
    web = tls_config(workdir, min_version="TLS13")
    web["http_server_config"] = {"headers": {"Strict-Transport-Security": "max-age=31536000"}}
    svc, _log = start(tmp_path, web)
    try:
        modern = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
        response = httpx.get(svc.base + "/-/healthy", verify=modern, timeout=10)
        assert response.status_code == 200
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        old = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(svc.base + "/-/healthy", verify=old, timeout=10)
    finally:
        svc.stop()


def test_max_version_and_tls12_cipher_suites_are_enforced(
    pki: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    workdir = pki[0]
    web = tls_config(
        workdir,
        max_version="TLS12",
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
        curve_preferences=["CurveP384"],
    )
    svc, _log = start(tmp_path, web)
    try:
        context = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
        context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")  # trustme: EC keys
        with httpx.Client(verify=context, timeout=10) as both:
            response = both.get(svc.base + "/-/healthy")
            assert response.status_code == 200
        host, port = svc.base.removeprefix("https://").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=10)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            cipher = tls.cipher()
            assert cipher is not None and (tls.version(), cipher[0]) == (
                "TLSv1.2",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
            )
        only_13 = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
        only_13.minimum_version = ssl.TLSVersion.TLSv1_3
        with pytest.raises(httpx.ConnectError):
            httpx.get(svc.base + "/-/healthy", verify=only_13, timeout=10)
        other_cipher = ssl.create_default_context(cafile=str(workdir / "server-ca.pem"))
        other_cipher.maximum_version = ssl.TLSVersion.TLSv1_2
        other_cipher.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with pytest.raises(httpx.ConnectError):
            httpx.get(svc.base + "/-/healthy", verify=other_cipher, timeout=10)
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"tls_server_config": {"curve_preferences": ["X25519", "CurveP256"]}},
            "curve_preferences .* cannot be honoured",
        ),
        (
            {"tls_server_config": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
            "cipher_suites .* cannot be honoured",
        ),
        ({"http_server_config": {"http2": True}}, "http2 cannot be honoured"),
        (
            {"tls_server_config": {"client_allowed_sans": ["prometheus"]}},
            "client_allowed_sans needs verified",
        ),
        ({"tls_server_config": {"renegotiation": "never"}}, "unknown keys"),
    ],
)
def test_a_key_that_cannot_be_honoured_stops_start_up_with_exit_2(
    pki: tuple[Path, trustme.CA, trustme.CA],
    tmp_path: Path,
    extra: dict[str, dict[str, object]],
    message: str,
) -> None:
    import re
    import subprocess
    import sys

    web = tls_config(pki[0])
    for section, values in extra.items():
        web[section] = {**(web.get(section) or {}), **values}  # type: ignore[dict-item]
    file = tmp_path / "web.yml"
    file.write_text(yaml.safe_dump(web))
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump(loopback_org("127.0.40.", servers=1)))
    argv = serve_args(inventory, "--web.config.file", str(file), source="o", interval=5, timeout=0.3)
    done = subprocess.run(
        [sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert re.search(message, done.stderr), done.stderr
