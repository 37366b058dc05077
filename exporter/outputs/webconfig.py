"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS (with client certificates) and
basic auth with bcrypt hashes.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven, ...
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt, e.g. `htpasswd -nBC 10 "" | tr -d ':\\n'`

/-/healthy answers without basic auth, so container and orchestrator health checks need no
credentials; TLS and client-certificate requirements still apply to it, as to every path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from exporter.errors import ConfigError

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
UNAUTHENTICATED_PATHS = frozenset({"/-/healthy"})
_KNOWN_TOP = {"tls_server_config", "basic_auth_users", "http_server_config"}
_KNOWN_TLS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
    "client_allowed_sans",
}


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2

    def uvicorn_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.client_ca_file:
            kwargs["ssl_ca_certs"] = self.client_ca_file
        kwargs["ssl_cert_reqs"] = int(self.client_auth)
        return kwargs


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def basic_auth(self) -> bool:
        return bool(self.users)


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check the file; every problem is a ConfigError naming it. Secrets never appear."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ConfigError(
            f"{file}: cannot read the web config: {exc.strerror}", fix="check the path"
        ) from None
    except yaml.YAMLError:
        raise ConfigError(
            f"{file}: not valid YAML", fix="see the exporter-toolkit web config format"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: must be a mapping", fix="see the exporter-toolkit web config format")
    unknown = set(data) - _KNOWN_TOP
    if unknown:
        raise ConfigError(f"{file}: unknown keys {sorted(unknown)}", fix=f"use {sorted(_KNOWN_TOP)}")
    tls = _tls(file, data.get("tls_server_config"))
    users: dict[str, bytes] = {}
    for user, hashed in (data.get("basic_auth_users") or {}).items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(
                f"{file}: basic_auth_users.{user} is not a bcrypt hash",
                fix="store bcrypt hashes, never passwords (htpasswd -nBC 10 USER)",
            )
        users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return WebConfig(tls, users)


def _tls(file: Path, section: Any) -> TLSSettings | None:
    if not section:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: tls_server_config must be a mapping", fix="see the README")
    unknown = set(section) - _KNOWN_TLS
    if unknown:
        raise ConfigError(
            f"{file}: tls_server_config: unknown keys {sorted(unknown)}", fix="check the spelling"
        )
    base = file.parent

    def resolve(name: str) -> str | None:
        value = section.get(name)
        if value is None:
            return None
        candidate = Path(value) if Path(value).is_absolute() else base / value
        if not candidate.is_file():
            raise ConfigError(
                f"{file}: tls_server_config.{name}: {candidate} not found", fix="check the path"
            )
        return str(candidate)

    cert, key = resolve("cert_file"), resolve("key_file")
    if not cert or not key:
        raise ConfigError(f"{file}: tls_server_config needs cert_file and key_file", fix="add both")
    auth_type = section.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH:
        raise ConfigError(
            f"{file}: client_auth_type {auth_type!r} is unknown", fix=f"use one of {list(CLIENT_AUTH)}"
        )
    client_ca = resolve("client_ca_file")
    if auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not client_ca:
        raise ConfigError(
            f"{file}: {auth_type} needs client_ca_file", fix="add the CA that signs client certs"
        )
    version = section.get("min_version", "TLS12")
    if version not in TLS_VERSIONS:
        raise ConfigError(
            f"{file}: min_version {version!r} is unknown", fix=f"use one of {list(TLS_VERSIONS)}"
        )
    settings = TLSSettings(cert, key, client_ca, CLIENT_AUTH[auth_type], TLS_VERSIONS[version])
    try:  # fail at start-up, not on the first scrape
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(client_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{file}: the certificate, key or CA does not load: {exc}", fix="check the files"
        ) from None
    return settings


class BasicAuth:
    """ASGI middleware: HTTP basic auth against bcrypt hashes. Successful checks are remembered under an
    HMAC of the credentials, so a scraper does not pay bcrypt's deliberate cost on every scrape."""

    def __init__(self, app: Callable[..., Awaitable[None]], users: dict[str, bytes]) -> None:
        import bcrypt

        self.app = app
        self.users = users
        self._bcrypt = bcrypt
        self._key = os.urandom(32)
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    def _valid(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or len(encoded) > 4096:
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        token = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if token in self._good:
                return True
        if not self._bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._good) > 1024:
                self._good.clear()
            self._good.add(token)
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        valid: bool = await run_in_threadpool(self._valid, header) if header else False
        if valid:
            await self.app(scope, receive, send)
            return
        response: Response = PlainTextResponse(
            "Unauthorized\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="exchange-firewall-exporter"'},
        )
        await response(scope, receive, send)
