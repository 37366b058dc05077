"""--web.config.file: real TLS with client certificates and bcrypt basic auth, against the real service."""

from __future__ import annotations

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
