"""What configures a directory read, all of it checked before anything connects: the LDAP URLs
(`Endpoint`), the bind method and user, the password (`Secret`, read by `read_password` from a file or
EXFW_BIND_PASSWORD, never the command line), TLS, timeouts and page size (`LdapSettings`).

ldap.py does the reading with these settings; nothing here opens a connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from exporter.errors import ConfigError

log = logging.getLogger(__name__)

PASSWORD_ENV = "EXFW_BIND_PASSWORD"  # noqa: S105 (the variable's name, not a password)
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000  # AD's MaxPageSize: a larger page is silently cut to 1000
DEFAULT_TIMEOUT = 10.0

AuthMethod = Literal["simple", "ntlm", "kerberos"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("simple", "ntlm", "kerberos")


class Secret:
    """A password that prints as `***` everywhere (repr, str, f-strings, logging, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def read_password(file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The bind password from `file` (trailing newline stripped) or else the EXFW_BIND_PASSWORD variable.

    Never from the command line, where every local user could read it in /proc.
    """
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the bind password file {path}: {exc.strerror}",
                fix="check the path and its permissions",
            ) from None
        text = text.rstrip("\r\n")
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                log.warning("the bind password file %s is readable by other users: chmod 600 it", path)
        if not text:
            raise ConfigError(f"the bind password file {path} is empty", fix="write the password into it")
        return Secret(text)
    value = (os.environ if environ is None else environ).get(PASSWORD_ENV)
    return Secret(value) if value else None


@dataclass(frozen=True)
class Endpoint:
    """One LDAP server to try. `address`, when set, is dialled instead of resolving `host`, and the
    certificate must still match `host` (a DC found in DNS through an explicitly given DNS server)."""

    host: str
    port: int
    tls: bool  # LDAPS: TLS from the first byte
    address: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'ldaps' if self.tls else 'ldap'}://{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`ldaps://dc1.example.com`, `ldap://10.0.0.5:389`, `ldaps://[fd00::5]:636`."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"LDAP URL {url!r}: {exc}", fix="e.g. ldaps://dc1.example.com:636") from None
        scheme = parts.scheme.lower()
        if scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ConfigError(
                f"LDAP URL {url!r} is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]",
                fix="e.g. ldaps://dc1.example.com:636",
            )
        if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ConfigError(
                f"LDAP URL {url!r} may only hold a scheme, host and port",
                fix="give the bind user with --ldap.bind-user and the password by file or variable",
            )
        default = 636 if scheme == "ldaps" else 389
        return cls(parts.hostname, port or default, scheme == "ldaps")


@dataclass(frozen=True)
class LdapSettings:
    """Where and how to read the directory. Validated once, here; the rest of the code trusts it."""

    urls: tuple[str, ...] = ()
    bind_user: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    starttls: bool = False
    auth: AuthMethod = "simple"
    allow_insecure_bind: bool = False
    domain: str | None = None  # for DNS SRV discovery when no URL is given
    site: str | None = None  # prefer this AD site's DCs in DNS SRV discovery
    dns_server: tuple[str, int] | None = None  # ask this DNS server instead of the host's resolver
    timeout: float = DEFAULT_TIMEOUT
    page_size: int = DEFAULT_PAGE_SIZE
    endpoints: tuple[Endpoint, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.auth not in AUTH_METHODS:
            raise ConfigError(
                f"unknown LDAP authentication {self.auth!r}", fix="use simple, ntlm or kerberos"
            )
        if not self.timeout > 0:
            raise ConfigError("the LDAP timeout must be greater than 0", fix="e.g. 10 (seconds)")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ConfigError(
                f"LDAP page size {self.page_size} is outside 1..{MAX_PAGE_SIZE}",
                fix=f"AD returns at most {MAX_PAGE_SIZE} entries a page; use {DEFAULT_PAGE_SIZE}",
            )
        endpoints = tuple(Endpoint.parse(url) for url in self.urls)
        object.__setattr__(self, "endpoints", endpoints)
        if self.starttls and any(e.tls for e in endpoints):
            raise ConfigError(
                "--ldap.starttls with an ldaps:// URL: the connection is already TLS",
                fix="use ldap://HOST:389 with --ldap.starttls, or ldaps://HOST:636 without it",
            )
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ConfigError(
                f"CA file {self.ca_file} does not exist",
                fix="give the PEM file of the CA that issued the DCs' certificates",
            )
        if self.auth in ("simple", "ntlm"):
            if not self.bind_user:
                raise ConfigError(
                    f"{self.auth} bind needs a bind user",
                    fix="--ldap.bind-user user@example.com (NTLM: EXAMPLE\\user)",
                )
            if self.password is None:
                raise ConfigError(
                    f"{self.auth} bind needs a password",
                    fix=f"set {PASSWORD_ENV} or give --ldap.bind-password-file FILE",
                )
        if self.auth == "simple" and not self.allow_insecure_bind:
            for endpoint in endpoints:
                if not endpoint.tls and not self.starttls:
                    raise ConfigError(
                        f"refusing a simple bind to {endpoint.url} without TLS: the password would cross "
                        "the network in clear text",
                        fix=f"use ldaps://{endpoint.host}:636 or --ldap.starttls "
                        "(--ldap.allow-insecure-bind is for labs)",
                    )
        if self.auth == "ntlm":
            if "\\" not in (self.bind_user or ""):
                raise ConfigError(
                    f"NTLM needs the bind user as DOMAIN\\user, not {self.bind_user!r}",
                    fix="e.g. EXAMPLE\\svc-exporter",
                )
            if not _md4_available():
                raise ConfigError(
                    "NTLM needs MD4, which this OpenSSL does not provide",
                    fix="pip install pycryptodome (ldap3 uses its MD4), or use simple bind over LDAPS",
                )
        if self.auth == "kerberos":
            try:
                importlib.import_module("gssapi")
            except ImportError:
                raise ConfigError(
                    "Kerberos needs the Python module gssapi, which is not installed",
                    fix="pip install gssapi (and have a ticket: kinit or a keytab), or use simple "
                    "bind over LDAPS",
                ) from None


def _md4_available() -> bool:
    try:
        hashlib.new("md4")  # noqa: S324 (NTLM's own hash; we only ask whether it exists)
        return True
    except ValueError:
        pass
    try:
        importlib.import_module("Crypto.Hash.MD4")
    except ImportError:
        return False
    return True
