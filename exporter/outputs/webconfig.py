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
import logging
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

log = logging.getLogger(__name__)

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
#: Go's TLS 1.2 cipher suite names (what exporter-toolkit configs carry) -> OpenSSL's. TLS 1.3 suites are
#: not configurable, in Go as here.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
#: Go's curve names -> OpenSSL's. Python's ssl sets one ECDH curve (SSLContext.set_ecdh_curve), not a list
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
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
    max_version: ssl.TLSVersion | None = None
    ciphers: str | None = None  # OpenSSL names, for TLS 1.2
    prefer_server_ciphers: bool = False
    curve: str | None = None  # OpenSSL's name of the one ECDH curve
    allowed_sans: frozenset[str] = frozenset()  # client certificate SANs let in (empty: any the CA signed)

    def uvicorn_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.client_ca_file:
            kwargs["ssl_ca_certs"] = self.client_ca_file
        kwargs["ssl_cert_reqs"] = int(self.client_auth)
        if self.ciphers:
            kwargs["ssl_ciphers"] = self.ciphers
        return kwargs

    def apply(self, context: ssl.SSLContext) -> None:
        """The settings uvicorn has no keyword for, on the context it built."""
        context.minimum_version = self.min_version
        if self.max_version is not None:
            context.maximum_version = self.max_version
        if self.prefer_server_ciphers:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.curve:
            context.set_ecdh_curve(self.curve)


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()  # http_server_config.headers: added to every response

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
    headers = _http_server_config(file, data.get("http_server_config"))
    users: dict[str, bytes] = {}
    for user, hashed in (data.get("basic_auth_users") or {}).items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(
                f"{file}: basic_auth_users.{user} is not a bcrypt hash",
                fix="store bcrypt hashes, never passwords (htpasswd -nBC 10 USER)",
            )
        users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return WebConfig(tls, users, headers)


def _http_server_config(file: Path, section: Any) -> tuple[tuple[str, str], ...]:
    """`headers` is honoured; `http2: true` cannot be (uvicorn speaks HTTP/1.1): refused, not ignored."""
    if not section:
        return ()
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: http_server_config must be a mapping", fix="see the README")
    unknown = set(section) - {"headers", "http2"}
    if unknown:
        raise ConfigError(
            f"{file}: http_server_config: unknown keys {sorted(unknown)}", fix="check the spelling"
        )
    if section.get("http2"):
        raise ConfigError(
            f"{file}: http_server_config.http2 cannot be honoured: this server speaks HTTP/1.1 only",
            fix="remove it (Prometheus scrapes over HTTP/1.1)",
        )
    headers = section.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _token(k) and "\r" not in v and "\n" not in v
        for k, v in headers.items()
    ):
        raise ConfigError(
            f"{file}: http_server_config.headers must map header names to one-line values",
            fix="e.g. {Strict-Transport-Security: max-age=31536000}",
        )
    return tuple((str(k), str(v)) for k, v in headers.items())


def _token(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


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
    versions = []
    for name, default in (("min_version", "TLS12"), ("max_version", None)):
        version = section.get(name, default)
        if version is not None and version not in TLS_VERSIONS:
            raise ConfigError(
                f"{file}: {name} {version!r} is unknown", fix=f"use one of {list(TLS_VERSIONS)}"
            )
        versions.append(TLS_VERSIONS[version] if version is not None else None)
    low, high = versions
    assert low is not None
    if high is not None and high < low:
        raise ConfigError(f"{file}: max_version is below min_version", fix="raise max_version")
    ciphers = None
    if section.get("cipher_suites"):
        names = section["cipher_suites"]
        wrong = [n for n in names if n not in CIPHER_SUITES] if isinstance(names, list) else [names]
        if wrong:
            raise ConfigError(
                f"{file}: cipher_suites {wrong} cannot be honoured (not a TLS 1.2 suite known here)",
                fix=f"use Go's names, e.g. {next(iter(CIPHER_SUITES))}",
            )
        ciphers = ":".join(CIPHER_SUITES[n] for n in names)
    curve = None
    if section.get("curve_preferences"):
        curves = section["curve_preferences"]
        if not isinstance(curves, list) or len(curves) != 1 or curves[0] not in CURVES:
            raise ConfigError(
                f"{file}: curve_preferences {curves!r} cannot be honoured: Python's ssl sets exactly one "
                "ECDH curve, by name",
                fix=f"give one of {list(CURVES)}, or leave curve_preferences out",
            )
        curve = CURVES[curves[0]]
    sans = section.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(san, str) and san for san in sans):
        raise ConfigError(f"{file}: client_allowed_sans must be a list of names", fix="e.g. [prometheus]")
    if sans and auth_type not in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise ConfigError(
            f"{file}: client_allowed_sans needs verified client certificates",
            fix="set client_auth_type: RequireAndVerifyClientCert and client_ca_file",
        )
    settings = TLSSettings(
        cert,
        key,
        client_ca,
        CLIENT_AUTH[auth_type],
        low,
        high,
        ciphers,
        bool(section.get("prefer_server_cipher_suites", False)),
        curve,
        frozenset(sans),
    )
    try:  # fail at start-up, not on the first scrape
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(client_ca)
        if ciphers:
            context.set_ciphers(ciphers)
        settings.apply(context)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{file}: the TLS settings do not load: {exc}", fix="check the files and names"
        ) from None
    return settings


def client_sans(certificate: dict[str, Any] | None) -> set[str]:
    """Every name a (verified) peer certificate carries: its subjectAltName values, then its CN."""
    if not certificate:
        return set()
    names = {str(value) for _kind, value in certificate.get("subjectAltName", ())}
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    return names


def allowed_client(certificate: dict[str, Any] | None, allowed: frozenset[str]) -> bool:
    """exporter-toolkit's client_allowed_sans: one of the certificate's SANs must be listed."""
    return not allowed or bool(client_sans(certificate) & allowed)


def checked_protocol(allowed: frozenset[str]) -> type:
    """uvicorn's HTTP protocol, closing a connection whose (verified) client certificate has none of the
    `allowed` SANs right after the handshake, before a request is read: client_allowed_sans."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class AllowedSans(AutoHTTPProtocol):  # type: ignore[misc,valid-type,unused-ignore]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            certificate = ssl_object.getpeercert() if ssl_object is not None else None
            if not allowed_client(certificate, allowed):
                log.warning(
                    "closed a connection: client certificate %s is not in client_allowed_sans",
                    ",".join(sorted(client_sans(certificate))[:5]) or "(none)",
                )
                transport.close()

    return AllowedSans


class ResponseHeaders:
    """ASGI middleware: http_server_config.headers on every response."""

    def __init__(self, app: Callable[..., Awaitable[None]], headers: tuple[tuple[str, str], ...]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _v in self.headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self.headers}
            await send(message)

        await self.app(scope, receive, with_headers)


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
