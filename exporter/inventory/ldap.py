"""Active Directory as an inventory source: Exchange servers, DAGs, domain controllers, sites and subnets,
read over LDAP (ldap3) into the same Inventory model the static file produces.

The directory is the administrator's data, not ours: a malformed object becomes a warning that names its
DN, and is kept whenever the rest of it is usable. Secrets never reach a log line, an exception or a repr.

This module connects, binds, searches and builds the result; what it is told to connect to, and how, is
ldap_settings.py, and decoding Exchange's own attributes is exchange_attributes.py.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import ipaddress
import logging
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.errors import ConfigError, DiscoveryError
from exporter.inventory.exchange_attributes import decode_roles, version_from_number, version_from_serial
from exporter.inventory.ldap_settings import Endpoint, LdapSettings, Secret
from exporter.inventory.model import (
    DomainController,
    Inventory,
    Role,
    Server,
    Version,
    neutralise,
    product_of_build,
)
from exporter.text import safe_text

log = logging.getLogger(__name__)

DEFAULT_DAG_REPLICATION_PORT = 64327
UNKNOWN_SITE = "unknown"  # a server without msExchServerSite is kept, labelled with this site
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"


class Reason(enum.StrEnum):
    """Why a discovery failed: a small bounded set, used as a metric label."""

    CONFIG = "config"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    BIND = "bind"
    SEARCH = "search"


# how far an attempt got: the furthest failure is the most telling one
_STAGE = {Reason.CONFIG: 0, Reason.DNS: 1, Reason.CONNECT: 2, Reason.TLS: 3, Reason.BIND: 4, Reason.SEARCH: 5}


# ---- errors ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointFailure:
    """How one LDAP server failed, in words an operator can act on (never holding a secret)."""

    url: str
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.url}: {self.reason.value}: {self.detail}"


class LdapDiscoveryError(DiscoveryError):
    """Every candidate DC failed; `failures` says which and how, `reason` is the furthest stage reached."""

    def __init__(
        self,
        failures: Sequence[EndpointFailure],
        *,
        fix: str | None = None,
        reason: Reason | None = None,
        message: str | None = None,
    ) -> None:
        self.failures = tuple(failures)
        self.reason = reason or max(
            (f.reason for f in self.failures), key=_STAGE.__getitem__, default=Reason.CONNECT
        )
        text = message or "directory discovery failed: " + "; ".join(map(str, self.failures))
        super().__init__(text, fix=fix)


class _AttemptFailed(Exception):
    def __init__(self, reason: Reason, detail: str, fix: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.fix = fix


# ---- the result -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscoveryResult:
    """What the directory said: the inventory plus the site topology and where it came from."""

    inventory: Inventory
    sites: dict[str, list[str]]  # site -> its subnets (sites without a subnet included)
    url: str  # the DC that answered
    forest: str  # DNS name of the forest root domain
    domain: str  # DNS name of the domain of the DC that answered
    duration_seconds: float = 0.0

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.inventory.warnings

    def site_of(self, address: str) -> str | None:
        """The site whose subnet holds `address` (longest prefix wins), as AD's own locator decides."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        best: tuple[int, str] | None = None
        for site, subnets in self.sites.items():
            for subnet in subnets:
                try:
                    network = ipaddress.ip_network(subnet, strict=False)
                except ValueError:
                    continue
                if (
                    ip.version == network.version
                    and ip in network
                    and (best is None or network.prefixlen > best[0])
                ):
                    best = (network.prefixlen, site)
        return best[1] if best else None


# ---- host names -------------------------------------------------------------------------------------------
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def is_hostname(value: str) -> bool:
    return bool(_HOSTNAME.match(value))


# ---- DNs --------------------------------------------------------------------------------------------------
_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)")


def _unescape(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        text = match.group(1)
        return chr(int(text, 16)) if len(text) == 2 else text

    return _ESCAPE.sub(one, value)


def rdn_values(dn: str) -> list[str]:
    """The values of a DN's RDNs, innermost first: `CN=a,CN=b,DC=x` -> ['a', 'b', 'x']."""
    from ldap3.utils.dn import parse_dn

    try:
        return [_unescape(value) for _, value, _ in parse_dn(dn)]
    except Exception:  # a malformed DN is reported by the caller as the value it came from
        return []


def dns_name_of(dn: str) -> str:
    """`DC=lab,DC=example,DC=test` -> `lab.example.test`."""
    from ldap3.utils.dn import parse_dn

    try:
        return ".".join(value for attr, value, _ in parse_dn(dn) if attr.upper() == "DC").lower()
    except Exception:  # ldap3 raises its own DN error; a rootDSE this broken still names a partition
        return dn


def _key(dn: str) -> str:
    return dn.lower()


# ---- LDAP plumbing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: dict[str, list[bytes]]  # lower-cased names

    def texts(self, name: str) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self.attributes.get(name.lower(), [])]

    def text(self, name: str) -> str | None:
        values = self.texts(name)
        return values[0] if values else None

    def integer(self, name: str) -> int | None:
        text = self.text(name)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None


def _scrub(text: str, secret: Secret | None) -> str:
    """Belt and braces: no message we build may carry the password, whatever a library put in it."""
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), "***")
    return text


class _Directory:
    """One bound connection and the searches discovery makes over it."""

    def __init__(self, conn: Any, page_size: int, secret: Secret | None) -> None:
        self.conn = conn
        self.page_size = page_size
        self.secret = secret

    def search(
        self,
        base: str,
        filter_: str,
        attributes: Sequence[str],
        *,
        scope: str = "SUBTREE",
        missing_ok: bool = False,
    ) -> list[_Entry]:
        """A paged search (AD caps a page at 1000 entries); ldap3's auto_range follows ranged values."""
        entries: list[_Entry] = []
        cookie: bytes | None = None
        while True:
            try:
                self.conn.search(
                    base,
                    filter_,
                    search_scope=scope,
                    attributes=list(attributes),
                    paged_size=self.page_size,
                    paged_cookie=cookie,
                )
            except Exception as exc:  # a dropped connection or timeout mid-search
                raise _AttemptFailed(
                    Reason.SEARCH, _scrub(f"search {filter_} under {base}: {exc}", self.secret)
                ) from None
            result = self.conn.result or {}
            code = result.get("result")
            if code == 32 and missing_ok:  # noSuchObject
                return entries
            if code != 0:
                raise _AttemptFailed(
                    Reason.SEARCH,
                    _scrub(
                        f"search {filter_} under {base}: {result.get('description')} "
                        f"{result.get('message') or ''}".strip(),
                        self.secret,
                    ),
                )
            for response in self.conn.response or ():
                if response.get("type") == "searchResEntry":
                    raw = response.get("raw_attributes") or {}
                    entries.append(
                        _Entry(str(response["dn"]), {str(k).lower(): list(v) for k, v in raw.items()})
                    )
            control = (result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
            cookie = (control.get("value") or {}).get("cookie")
            if not cookie:
                return entries


def _classify_open_error(exc: BaseException) -> tuple[Reason, str]:
    """TLS or TCP, in a few words. ldap3 re-raises socket failures as a class that also derives from the
    original exception (ssl.SSLError, ConnectionRefusedError ...), so the type tells; the text is the
    fallback."""
    from ldap3.core.exceptions import LDAPCertificateError, LDAPSSLConfigurationError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, LDAPCertificateError):
        return Reason.TLS, "the certificate does not match the DC's name"
    ssl_words = re.search(r"\[SSL: [A-Z_0-9]+\][^'\"()]*", text)
    if isinstance(exc, LDAPSSLConfigurationError | ssl.SSLError) or ssl_words or "ssl" in text.lower():
        return Reason.TLS, ssl_words.group(0).strip() if ssl_words else text
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (TimeoutError, "timed out"),
        (socket.gaierror, "host name not found"),
    ):
        if isinstance(exc, kind):
            return Reason.CONNECT, words
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Reason.CONNECT, os.strerror(exc.errno).lower()
    lowered = text.lower()
    for needle, words in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("unreachable", "unreachable"),
        ("not known", "host name not found"),
    ):
        if needle in lowered:
            return Reason.CONNECT, words
    return Reason.CONNECT, text


_BIND_FIXES = {
    49: "check the bind user and the password (EXFW_BIND_PASSWORD or --ldap.bind-password-file)",
    8: "the DC requires TLS or signing: use ldaps:// or --ldap.starttls",
    50: "the bind user may not log on here; check the account",
}


def _connect(endpoint: Endpoint, settings: LdapSettings) -> Any:
    """An open, TLS-protected (unless allowed otherwise) and bound ldap3 connection."""
    from ldap3 import KERBEROS, NTLM, SASL, SIMPLE, Connection, Server, Tls

    secret = settings.password
    tls = Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=settings.ca_file,
        valid_names=[endpoint.host] if endpoint.address else None,
    )
    server = Server(
        endpoint.address or endpoint.host,
        port=endpoint.port,
        use_ssl=endpoint.tls,
        tls=tls,
        get_info="NO_INFO",
        connect_timeout=settings.timeout,
    )
    options: dict[str, Any] = {}
    if settings.auth == "simple":
        options = {
            "authentication": SIMPLE,
            "user": settings.bind_user,
            "password": secret.reveal() if secret else None,
        }
    elif settings.auth == "ntlm":
        options = {
            "authentication": NTLM,
            "user": settings.bind_user,
            "password": secret.reveal() if secret else None,
        }
    else:
        options = {
            "authentication": SASL,
            "sasl_mechanism": KERBEROS,
            "sasl_credentials": (endpoint.host,),
            "user": settings.bind_user,
        }
    # ldap3 packs receive_timeout into SO_RCVTIMEO as whole seconds
    conn = Connection(
        server,
        auto_bind="NONE",
        read_only=True,
        receive_timeout=math.ceil(settings.timeout),
        raise_exceptions=False,
        auto_range=True,
        auto_referrals=False,
        check_names=False,
        **options,
    )
    try:
        conn.open()
    except Exception as exc:  # ldap3 raises its own types, OSError and ssl errors alike
        reason, detail = _classify_open_error(exc)
        fix = (
            "trust the CA that issued the DC's certificate with --ldap.ca-file"
            if reason is Reason.TLS
            else "check the address, the port and the firewall between here and the DC"
        )
        raise _AttemptFailed(reason, _scrub(detail, secret), fix) from None
    try:
        if settings.starttls and not endpoint.tls:
            try:
                started = conn.start_tls()
            except Exception as exc:
                reason, detail = _classify_open_error(exc)
                raise _AttemptFailed(
                    Reason.TLS,
                    _scrub(f"StartTLS: {detail}", secret),
                    "trust the DC's CA with --ldap.ca-file, or use ldaps://",
                ) from None
            if not started:
                result = conn.result or {}
                raise _AttemptFailed(
                    Reason.TLS,
                    f"StartTLS refused: {result.get('description')}",
                    "the DC has no certificate for StartTLS; use ldaps://",
                )
        if settings.auth == "simple" and not endpoint.tls and not settings.starttls:
            log.warning(
                "simple bind to %s without TLS: the password crosses the network in clear text", endpoint.url
            )
        try:
            bound = conn.bind()
        except Exception as exc:
            from ldap3.core.exceptions import LDAPSessionTerminatedByServerError

            hint = None
            if settings.auth == "ntlm" and isinstance(exc, LDAPSessionTerminatedByServerError):
                # ldap3's NTLM is the Sicily bind, which only Windows DCs implement (ldap3 #663, #836)
                hint = (
                    "the DC dropped the NTLM (Sicily) bind, which Samba DCs do not implement: "
                    "use simple bind over LDAPS"
                )
            raise _AttemptFailed(Reason.BIND, _scrub(f"{type(exc).__name__}: {exc}", secret), hint) from None
        if not bound:
            result = conn.result or {}
            code = result.get("result")
            message = str(result.get("message") or "").strip().rstrip("\x00").strip()
            detail = f"{result.get('description')} ({code})" + (f": {message}" if message else "")
            raise _AttemptFailed(Reason.BIND, _scrub(detail, secret), _BIND_FIXES.get(code or -1))
    except BaseException:
        _close(conn)
        raise
    return conn


def _close(conn: Any) -> None:
    try:
        conn.unbind()
    except Exception as exc:  # closing a broken connection must not mask the real error
        log.debug("unbind failed: %s", type(exc).__name__)


# ---- discovery ---------------------------------------------------------------------------------------------
_ROOT_DSE = ("defaultNamingContext", "configurationNamingContext", "rootDomainNamingContext", "dnsHostName")
_SERVER_ATTRS = (
    "name",
    "cn",
    "objectClass",
    "networkAddress",
    "msExchCurrentServerRoles",
    "serialNumber",
    "versionNumber",
    "msExchServerSite",
    "msExchMDBAvailabilityGroupLink",
)
SERVER_FILTER = "(&(objectClass=msExchExchangeServer)(!(objectClass=msExchExchangeTransportServer)))"


def discover(settings: LdapSettings) -> DiscoveryResult:
    """Read the organisation from the first DC that works; raise LdapDiscoveryError naming every failure."""
    endpoints = list(settings.endpoints) or _located_endpoints(settings)
    failures: list[EndpointFailure] = []
    fixes: list[str] = []
    for endpoint in endpoints:
        try:
            return _discover_from(endpoint, settings)
        except _AttemptFailed as failed:
            failures.append(EndpointFailure(endpoint.url, failed.reason, failed.detail))
            if failed.fix and failed.fix not in fixes:
                fixes.append(failed.fix)
    raise LdapDiscoveryError(failures, fix="; ".join(fixes) or None)


def _discover_from(endpoint: Endpoint, settings: LdapSettings) -> DiscoveryResult:
    started = time.monotonic()
    log.debug(
        "discovery: trying %s (%s bind%s)",
        endpoint.url,
        settings.auth,
        ", StartTLS" if settings.starttls and not endpoint.tls else "",
    )
    conn = _connect(endpoint, settings)
    try:
        result = _read(_Directory(conn, settings.page_size, settings.password), endpoint)
    finally:
        _close(conn)
    duration = time.monotonic() - started
    log.info(
        "discovered %d Exchange servers, %d domain controllers, %d sites from %s in %.2fs (%d warnings)",
        len(result.inventory.servers),
        len(result.inventory.domain_controllers),
        len(result.sites),
        endpoint.url,
        duration,
        len(result.warnings),
    )
    return dataclasses.replace(result, duration_seconds=duration)


def _located_endpoints(settings: LdapSettings) -> list[Endpoint]:
    from exporter.inventory import dns_srv

    try:
        located = dns_srv.locate_dcs(
            settings.domain, site=settings.site, nameserver=settings.dns_server, timeout=settings.timeout
        )
    except DiscoveryError as exc:
        raise LdapDiscoveryError([], reason=Reason.DNS, message=exc.message, fix=exc.fix) from None
    endpoints = []
    for dc in located:
        address = dc.addresses[0] if dc.addresses else None
        if settings.starttls:
            endpoints.append(Endpoint(dc.host, dc.port, tls=False, address=address))
        else:  # the locator publishes 389; AD serves LDAPS on 636 of the same host
            endpoints.append(Endpoint(dc.host, 636, tls=True, address=address))
    return endpoints


def _read(directory: _Directory, endpoint: Endpoint) -> DiscoveryResult:
    root = directory.search("", "(objectClass=*)", _ROOT_DSE, scope="BASE")
    if not root:
        raise _AttemptFailed(Reason.SEARCH, "the rootDSE returned nothing")
    default_nc = root[0].text("defaultNamingContext")
    config_nc = root[0].text("configurationNamingContext")
    forest_nc = root[0].text("rootDomainNamingContext") or default_nc
    if not default_nc or not config_nc or not forest_nc:
        raise _AttemptFailed(
            Reason.SEARCH,
            "the rootDSE names no defaultNamingContext/configurationNamingContext: "
            "is this an Active Directory DC?",
        )
    exchange_dn = f"CN=Microsoft Exchange,CN=Services,{config_nc}"
    sites_dn = f"CN=Sites,{config_nc}"
    orgs = directory.search(
        exchange_dn,
        "(objectClass=msExchOrganizationContainer)",
        ("name", "cn"),
        scope="LEVEL",
        missing_ok=True,
    )
    if not orgs:
        raise _AttemptFailed(
            Reason.SEARCH,
            f"no Exchange organisation under {exchange_dn}",
            "is Exchange installed in this forest, and may the bind user read the configuration partition?",
        )
    warnings: list[str] = []
    orgs.sort(key=lambda e: _key(e.dn))
    for extra in orgs[1:]:
        warnings.append(f"{extra.dn}: a second Exchange organisation; only {orgs[0].dn} is read")
    org_dn = orgs[0].dn
    organisation = orgs[0].text("name") or orgs[0].text("cn") or (rdn_values(org_dn) or ["Exchange"])[0]

    server_entries = directory.search(org_dn, SERVER_FILTER, _SERVER_ATTRS)
    dag_entries = directory.search(
        org_dn,
        "(objectClass=msExchMDBAvailabilityGroup)",
        ("name", "cn", "msExchMDBAvailabilityGroupReplicationPort", "msExchFileShareWitness"),
    )
    site_entries = directory.search(sites_dn, "(objectClass=site)", ("name", "cn"), scope="LEVEL")
    subnet_entries = directory.search(
        f"CN=Subnets,{sites_dn}",
        "(objectClass=subnet)",
        ("name", "cn", "siteObject"),
        scope="LEVEL",
        missing_ok=True,
    )
    site_servers = directory.search(sites_dn, "(objectClass=server)", ("name", "cn", "dNSHostName"))
    ntds_entries = directory.search(sites_dn, "(objectClass=nTDSDSA)", ("objectClass", "options"))

    sites = _sites(site_entries, subnet_entries, warnings)
    dags = {
        _key(e.dn): (
            e.text("name") or (rdn_values(e.dn) or [e.dn])[0],
            e.integer("msExchMDBAvailabilityGroupReplicationPort") or DEFAULT_DAG_REPLICATION_PORT,
        )
        for e in dag_entries
    }
    drafts = [
        d
        for d in (_server_draft(e, dags, warnings) for e in sorted(server_entries, key=lambda e: _key(e.dn)))
        if d is not None
    ]
    _fill_fqdns_from_computers(directory, default_nc, drafts, warnings)
    servers, dcs = _unique_fqdns(
        _finish_servers(drafts, warnings), _domain_controllers(ntds_entries, site_servers, warnings), warnings
    )
    servers.sort(key=lambda s: s.name.lower())
    dcs.sort(key=lambda d: (d.name.lower(), d.fqdn))
    witnesses = _witnesses(dag_entries, warnings)
    # grouped by object (each warning starts with its DN), in a stable order
    warnings.sort(key=str.lower)
    inventory = neutralise(
        Inventory(
            organisation,
            tuple(servers),
            tuple(dcs),
            source=f"ldap:{endpoint.url}",
            warnings=tuple(warnings),
            witnesses=witnesses,
        )
    )
    sites = {safe_text(site): subnets for site, subnets in sites.items()}
    return DiscoveryResult(inventory, sites, endpoint.url, dns_name_of(forest_nc), dns_name_of(default_nc))


def witness_host(share: str) -> str | None:
    """The server of a file share witness path: `\\\\fsw01.contoso.com\\DAG1.contoso.com` (or a bare
    host name, as the attribute sometimes holds) -> `fsw01.contoso.com`; None when there is none."""
    host = share.strip().lstrip("\\/").split("\\", 1)[0].split("/", 1)[0]
    return host.lower() if host and is_hostname(host) else None


def _witnesses(dag_entries: list[_Entry], warnings: list[str]) -> tuple[tuple[str, str], ...]:
    """(DAG, witness server) from each DAG's msExchFileShareWitness."""
    found = []
    for entry in sorted(dag_entries, key=lambda e: _key(e.dn)):
        share = entry.text("msExchFileShareWitness")
        if not share:
            continue
        name = entry.text("name") or (rdn_values(entry.dn) or [entry.dn])[0]
        host = witness_host(share)
        if host is None:
            warnings.append(
                f"{entry.dn}: msExchFileShareWitness {safe_text(share)!r} names no server; ignored"
            )
            continue
        found.append((name, host))
    return tuple(found)


def _sites(
    site_entries: list[_Entry], subnet_entries: list[_Entry], warnings: list[str]
) -> dict[str, list[str]]:
    names = {_key(e.dn): e.text("name") or (rdn_values(e.dn) or [e.dn])[0] for e in site_entries}
    sites: dict[str, list[str]] = {name: [] for name in sorted(names.values(), key=str.lower)}
    for subnet in sorted(subnet_entries, key=lambda e: _key(e.dn)):
        prefix = subnet.text("name") or (rdn_values(subnet.dn) or [subnet.dn])[0]
        site_dn = subnet.text("siteObject")
        if not site_dn:
            warnings.append(f"{subnet.dn}: subnet {prefix} belongs to no site")
            continue
        site = names.get(_key(site_dn)) or (rdn_values(site_dn) or [site_dn])[0]
        sites.setdefault(site, []).append(prefix)
    for subnets in sites.values():
        subnets.sort(key=_network_sort_key)
    return sites


def _network_sort_key(prefix: str) -> tuple[int, int, int, str]:
    try:
        network = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return (9, 0, 0, prefix)
    return (network.version, int(network.network_address), network.prefixlen, prefix)


@dataclass
class _ServerDraft:
    dn: str
    name: str
    roles: frozenset[Role]
    version: Version
    site: str
    fqdn: str | None
    dag: str | None
    dag_port: int | None
    address_problem: str | None  # why fqdn is None: the computer object may still know it


def _server_draft(
    entry: _Entry, dags: Mapping[str, tuple[str, int]], warnings: list[str]
) -> _ServerDraft | None:
    """One msExchExchangeServer object; None (with a warning saying why) when it cannot be probed."""
    dn = entry.dn
    name = entry.text("name") or entry.text("cn") or (rdn_values(dn) or [""])[0]
    version = _version(entry, warnings)
    if version is None:
        return None
    mask = entry.integer("msExchCurrentServerRoles")
    if mask is None:
        warnings.append(f"{dn}: skipped: no msExchCurrentServerRoles (roles unknown)")
        return None
    assert version.build is not None
    decoded = decode_roles(mask, version.build[0])
    if decoded.unknown_bits:
        warnings.append(
            f"{dn}: unknown bits {decoded.unknown_bits:#x} in msExchCurrentServerRoles {mask}; "
            f"kept the known roles ({', '.join(sorted(r.value for r in decoded.roles)) or 'none'})"
        )
    if not decoded.roles:
        warnings.append(
            f"{dn}: skipped: msExchCurrentServerRoles {mask} "
            f"({'+'.join(decoded.names) or 'none'}) holds no role this exporter probes"
        )
        return None
    site_dn = entry.text("msExchServerSite")
    site = (rdn_values(site_dn) or [""])[0] if site_dn else ""
    if not site:
        what = f"msExchServerSite {site_dn!r} is not a DN" if site_dn else "no msExchServerSite"
        warnings.append(f"{dn}: {what}; site set to {UNKNOWN_SITE!r}")
        site = UNKNOWN_SITE
    fqdn = None
    tcp_values = [
        v.split(":", 1)[1].strip()
        for v in entry.texts("networkAddress")
        if v.lower().startswith("ncacn_ip_tcp:")
    ]
    for value in tcp_values:
        if is_hostname(value):
            fqdn = value.rstrip(".").lower()
            break
    address_problem = None
    if fqdn is None:
        address_problem = (
            f"networkAddress 'ncacn_ip_tcp:{tcp_values[0]}' is not a DNS name"
            if tcp_values
            else "no ncacn_ip_tcp networkAddress"
        )
    dag = dag_port = None
    dag_dn = entry.text("msExchMDBAvailabilityGroupLink")
    if dag_dn:
        known = dags.get(_key(dag_dn))
        if known is None:
            dag = (rdn_values(dag_dn) or [dag_dn])[0]
            dag_port = DEFAULT_DAG_REPLICATION_PORT
            warnings.append(
                f"{dn}: msExchMDBAvailabilityGroupLink {dag_dn} names no DAG object here; "
                f"assumed DAG {dag} with replication port {dag_port}"
            )
        else:
            dag, dag_port = known
    return _ServerDraft(dn, name, decoded.roles, version, site, fqdn, dag, dag_port, address_problem)


def _version(entry: _Entry, warnings: list[str]) -> Version | None:
    dn = entry.dn
    serials = entry.texts("serialNumber")
    problem = None
    build: tuple[int, ...] | None = None
    for serial in serials:
        build = version_from_serial(serial)
        if build is not None:
            break
    if build is None:
        problem = (
            f"serialNumber {serials[0]!r} is not 'Version X.Y (Build N.R)'" if serials else "no serialNumber"
        )
        number = entry.integer("versionNumber")
        build = version_from_number(number) if number is not None else None
        if build is None:
            detail = (
                "no versionNumber" if number is None else f"versionNumber {number} is not a 2010-SE version"
            )
            warnings.append(f"{dn}: skipped: {problem} and {detail}")
            return None
    try:
        product = product_of_build(build)
    except ConfigError:
        warnings.append(f"{dn}: skipped: Exchange {'.'.join(map(str, build))} is not 2010-SE")
        return None
    version = Version(product, build)
    if problem:
        warnings.append(f"{dn}: {problem}; version {version} ({product.value}) taken from versionNumber")
    return version


def _fill_fqdns_from_computers(
    directory: _Directory, default_nc: str, drafts: list[_ServerDraft], warnings: list[str]
) -> None:
    """Servers without a usable ncacn_ip_tcp address: use their computer object's dNSHostName."""
    from ldap3.utils.conv import escape_filter_chars

    missing = [d for d in drafts if d.fqdn is None]
    found: dict[str, str] = {}
    for start in range(0, len(missing), 100):
        chunk = missing[start : start + 100]
        names = "".join(f"(sAMAccountName={escape_filter_chars(d.name + '$')})" for d in chunk)
        for entry in directory.search(
            default_nc, f"(&(objectCategory=computer)(|{names}))", ("sAMAccountName", "dNSHostName")
        ):
            account, host = entry.text("sAMAccountName"), entry.text("dNSHostName")
            if account and host and is_hostname(host):
                found[account.removesuffix("$").lower()] = host.rstrip(".").lower()
    for draft in missing:
        host = found.get(draft.name.lower())
        if host:
            draft.fqdn = host
            warnings.append(
                f"{draft.dn}: {draft.address_problem}; FQDN {host} taken from the computer "
                "object's dNSHostName"
            )
        else:
            warnings.append(
                f"{draft.dn}: skipped: {draft.address_problem} and no computer object "
                f"{draft.name}$ with a dNSHostName"
            )


def _finish_servers(drafts: list[_ServerDraft], warnings: list[str]) -> list[tuple[str, Server]]:
    kept: dict[str, _ServerDraft] = {}
    servers = []
    for draft in drafts:
        if draft.fqdn is None:
            continue
        first = kept.get(draft.name.lower())
        if first is not None:
            warnings.append(
                f"{draft.dn}: skipped: duplicate server name {draft.name}, already used by {first.dn}"
            )
            continue
        kept[draft.name.lower()] = draft
        servers.append(
            (
                draft.dn,
                Server(
                    name=draft.name,
                    fqdn=draft.fqdn,
                    roles=draft.roles,
                    version=draft.version,
                    site=draft.site,
                    dag=draft.dag,
                    dag_replication_port=draft.dag_port,
                ),
            )
        )
    return servers


def _domain_controllers(
    ntds_entries: list[_Entry], site_servers: list[_Entry], warnings: list[str]
) -> list[tuple[str, DomainController]]:
    """DCs from their NTDS Settings objects (nTDSDSA, and nTDSDSARO for an RODC) under CN=Sites."""
    servers = {_key(e.dn): e for e in site_servers}
    dcs = []
    for ntds in sorted(ntds_entries, key=lambda e: _key(e.dn)):
        parts = rdn_values(ntds.dn)
        # CN=NTDS Settings,CN=<dc>,CN=Servers,CN=<site>,CN=Sites,...
        if len(parts) < 5:
            warnings.append(f"{ntds.dn}: skipped: not under CN=<server>,CN=Servers,CN=<site>,CN=Sites")
            continue
        server_dn = ntds.dn.split(",", 1)[1]
        server = servers.get(_key(server_dn))
        name = (server.text("name") if server else None) or parts[1]
        host = server.text("dNSHostName") if server else None
        if not host or not is_hostname(host):
            warnings.append(
                f"{server_dn}: skipped: domain controller {name} has no usable dNSHostName"
                + (f" ({host!r})" if host else "")
            )
            continue
        classes = {c.lower() for c in ntds.texts("objectClass")}
        options = ntds.integer("options") or 0
        dcs.append(
            (
                server_dn,
                DomainController(
                    name=name,
                    fqdn=host.rstrip(".").lower(),
                    site=parts[3],
                    global_catalog=bool(options & 1),
                    read_only="ntdsdsaro" in classes,
                ),
            )
        )
    return dcs


def _unique_fqdns(
    servers: list[tuple[str, Server]], dcs: list[tuple[str, DomainController]], warnings: list[str]
) -> tuple[list[Server], list[DomainController]]:
    """Every member needs its own FQDN (the static file insists too): the first keeps it."""
    seen: dict[str, str] = {}
    unique_servers = []
    for dn, server in servers:
        if server.fqdn in seen:
            warnings.append(f"{dn}: skipped: FQDN {server.fqdn} already used by {seen[server.fqdn]}")
            continue
        seen[server.fqdn] = dn
        unique_servers.append(server)
    unique_dcs = []
    for dn, dc in dcs:
        if dc.fqdn in seen:
            warnings.append(f"{dn}: skipped: FQDN {dc.fqdn} already used by {seen[dc.fqdn]}")
            continue
        seen[dc.fqdn] = dn
        unique_dcs.append(dc)
    return unique_servers, unique_dcs
