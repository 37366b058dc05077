"""A real Active Directory domain controller for tests: Samba, provisioned once per test session.

    SambaLab.build()   provision LAB.EXAMPLE.TEST (DC1, site HQ) into a temp directory, issue a lab CA and
                       a server certificate (SAN dc1.lab.example.test + the lab IPs), extend the schema
                       with the Exchange classes discovery reads and load an Exchange organisation
                       (offline, with the relax control: see tests/lab/samba_offline.py)
    SambaLab.start()   run `samba` on 127.0.77.1 (a /32 alias on `lo`): LDAP 389/636, GC, DNS 53, KDC
    SambaLab.relaxed() a copy of the same directory on 127.0.77.2 with `ldap server require strong auth =
                       no`, for simple binds over plain ldap://
    SambaLab.stop()    stop every process started here (by process group and pidfile), drop the alias

Only loopback addresses this module adds receive traffic. Missing Samba packages make the lab raise,
never skip: an untested discovery is a broken CI, not a pass.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"  # the only Python with Samba's bindings on Debian

REALM = "LAB.EXAMPLE.TEST"
DNS_DOMAIN = "lab.example.test"
NETBIOS_DOMAIN = "LAB"
DOMAIN_DN = "DC=lab,DC=example,DC=test"
CONFIG_DN = f"CN=Configuration,{DOMAIN_DN}"
SCHEMA_DN = f"CN=Schema,{CONFIG_DN}"
DC_NAME = "DC1"
DC_FQDN = f"dc1.{DNS_DOMAIN}"
LAB_IP = "127.0.77.1"
RELAXED_IP = "127.0.77.2"
ADMIN_USER = "Administrator"
ADMIN_UPN = f"{ADMIN_USER}@{DNS_DOMAIN}"
ADMIN_NTLM = f"{NETBIOS_DOMAIN}\\{ADMIN_USER}"
ADMIN_PASSWORD = "Lab-Admin-Pass1!"  # a lab secret; the leak test looks for exactly this string

ORG = "Contoso Lab"
EXCHANGE_DN = f"CN=Microsoft Exchange,CN=Services,{CONFIG_DN}"
ORG_DN = f"CN={ORG},{EXCHANGE_DN}"
ADMIN_GROUPS_DN = f"CN=Administrative Groups,{ORG_DN}"
AG_DN = f"CN=Exchange Administrative Group (FYDIBOHF23SPDLT),{ADMIN_GROUPS_DN}"
LEGACY_AG_DN = f"CN=First Administrative Group,{ADMIN_GROUPS_DN}"
SITES_DN = f"CN=Sites,{CONFIG_DN}"

# A documentation-only enterprise arc (RFC 5612): Microsoft's real OIDs are not needed, discovery
# queries by lDAPDisplayName.
OID_ARC = "1.3.6.1.4.1.32473.77"
DN_OM_OBJECT_CLASS = base64.b64decode("KwwCh3McAIVK")  # 1.3.12.2.1011.28.0.714, the DN syntax


def require_samba() -> None:
    """Raise (never skip) when the lab cannot be built on this machine."""
    missing = [tool for tool in ("samba", "samba-tool", "openssl", "ip") if shutil.which(tool) is None]
    if (
        not Path(SYSTEM_PYTHON).exists()
        or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import samba.samdb"], capture_output=True, check=False
        ).returncode
    ):
        missing.append("python3-samba (for /usr/bin/python3)")
    if not Path("/usr/share/samba/setup/ad-schema").is_dir():
        missing.append("samba-ad-provision")
    if missing:
        raise RuntimeError(
            f"the Samba AD lab needs {', '.join(missing)}: apt-get install samba samba-ad-dc "
            "samba-ad-provision python3-samba winbind smbclient ldap-utils openssl iproute2"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the Samba AD lab needs root (a loopback alias and a DC on ports 53/88/389/636)")


def run(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr or done.stdout}"
        )
    return done.stdout


# ---- LDIF ---------------------------------------------------------------------------------------------
Value = str | int | bytes
Attributes = Mapping[str, Value | Sequence[Value]]


def _ldif_line(name: str, value: Value) -> str:
    if isinstance(value, int):
        return f"{name}: {value}"
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    safe = raw.isascii() and raw == raw.strip() and not raw.startswith((b":", b"<")) and b"\n" not in raw
    if safe and not isinstance(value, bytes):
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(raw).decode('ascii')}"


def ldif_entry(dn: str, attributes: Attributes) -> str:
    lines = [_ldif_line("dn", dn)]
    for name, values in attributes.items():
        for value in [values] if isinstance(values, str | int | bytes) else values:
            lines.append(_ldif_line(name, value))
    return "\n".join(lines) + "\n\n"


# ---- the Exchange schema extension ----------------------------------------------------------------------
@dataclass(frozen=True)
class Attr:
    cn: str
    ldap_name: str
    number: int
    syntax: str  # "int", "dn", "string", "large"
    single: bool = True
    link_id: int | None = None


@dataclass(frozen=True)
class Klass:
    cn: str
    ldap_name: str
    number: int
    poss_superiors: tuple[str, ...]
    sub_class_of: str = "top"
    may_contain: tuple[str, ...] = ()


_SYNTAX: dict[str, dict[str, Value]] = {
    "int": {"attributeSyntax": "2.5.5.9", "oMSyntax": 2},
    "large": {"attributeSyntax": "2.5.5.16", "oMSyntax": 65},
    "string": {"attributeSyntax": "2.5.5.12", "oMSyntax": 64},
    "dn": {"attributeSyntax": "2.5.5.1", "oMSyntax": 127, "oMObjectClass": DN_OM_OBJECT_CLASS},
}

EXCHANGE_ATTRIBUTES = (
    Attr("ms-Exch-Current-Server-Roles", "msExchCurrentServerRoles", 1, "int"),
    Attr("ms-Exch-Server-Site", "msExchServerSite", 2, "dn"),
    Attr("ms-Exch-Version", "msExchVersion", 3, "large"),
    Attr(
        "ms-Exch-MDB-Availability-Group-Link",
        "msExchMDBAvailabilityGroupLink",
        4,
        "dn",
        link_id=2_077_000_000,
    ),
    Attr(
        "ms-Exch-MDB-Availability-Group-BL",
        "msExchMDBAvailabilityGroupBL",
        5,
        "dn",
        single=False,
        link_id=2_077_000_001,
    ),
    Attr(
        "ms-Exch-MDB-Availability-Group-Replication-Port",
        "msExchMDBAvailabilityGroupReplicationPort",
        6,
        "int",
    ),
    Attr("ms-Exch-MDB-Availability-Group-Name", "msExchMDBAvailabilityGroupName", 7, "string"),
    Attr("ms-Exch-File-Share-Witness", "msExchFileShareWitness", 8, "string"),
)

_SERVER_MAY = (
    "msExchCurrentServerRoles",
    "msExchServerSite",
    "msExchVersion",
    "msExchMDBAvailabilityGroupLink",
    "serialNumber",
    "versionNumber",
    "networkAddress",
    "legacyExchangeDN",
)

# One list per schema transaction: a class naming another new class (possSuperiors, subClassOf) must
# come after a schema reload.
EXCHANGE_CLASS_LEVELS: tuple[tuple[Klass, ...], ...] = (
    (
        Klass(
            "ms-Exch-Organization-Container",
            "msExchOrganizationContainer",
            1,
            ("msExchConfigurationContainer",),
            may_contain=("msExchVersion",),
        ),
    ),
    (
        Klass(
            "ms-Exch-Admin-Group-Container", "msExchAdminGroupContainer", 2, ("msExchOrganizationContainer",)
        ),
    ),
    (
        Klass(
            "ms-Exch-Admin-Group",
            "msExchAdminGroup",
            3,
            ("msExchAdminGroupContainer",),
            may_contain=("msExchVersion", "legacyExchangeDN"),
        ),
    ),
    (
        Klass("ms-Exch-Servers-Container", "msExchServersContainer", 4, ("msExchAdminGroup",)),
        Klass(
            "ms-Exch-MDB-Availability-Group-Container",
            "msExchMDBAvailabilityGroupContainer",
            5,
            ("msExchAdminGroup",),
        ),
    ),
    (
        Klass(
            "ms-Exch-Exchange-Server",
            "msExchExchangeServer",
            6,
            ("msExchServersContainer",),
            sub_class_of="server",
            may_contain=_SERVER_MAY,
        ),
        Klass(
            "ms-Exch-MDB-Availability-Group",
            "msExchMDBAvailabilityGroup",
            7,
            ("msExchMDBAvailabilityGroupContainer",),
            may_contain=(
                "msExchMDBAvailabilityGroupReplicationPort",
                "msExchMDBAvailabilityGroupName",
                "msExchMDBAvailabilityGroupBL",
                "msExchVersion",
                "msExchFileShareWitness",
            ),
        ),
    ),
    (
        Klass(
            "ms-Exch-Exchange-Transport-Cfg-Container",
            "msExchExchangeTransportCfgContainer",
            8,
            ("msExchExchangeServer",),
        ),
    ),
    (
        Klass(
            "ms-Exch-Exchange-Transport-Server",
            "msExchExchangeTransportServer",
            9,
            ("msExchExchangeTransportCfgContainer",),
            sub_class_of="msExchExchangeServer",
        ),
    ),
)


def _schema_guid(name: str) -> bytes:
    return uuid.uuid5(uuid.NAMESPACE_OID, f"exchange-lab:{name}").bytes_le


def exchange_schema_ldif() -> list[str]:
    """The schema extension as LDIF, one document per transaction."""
    attributes = []
    for a in EXCHANGE_ATTRIBUTES:
        entry: dict[str, Value | Sequence[Value]] = {
            "objectClass": ["top", "attributeSchema"],
            "cn": a.cn,
            "attributeID": f"{OID_ARC}.1.{a.number}",
            "lDAPDisplayName": a.ldap_name,
            "adminDisplayName": a.cn,
            "isSingleValued": "TRUE" if a.single else "FALSE",
            "schemaIDGUID": _schema_guid(a.ldap_name),
            "searchFlags": 0,
            **_SYNTAX[a.syntax],
        }
        if a.link_id is not None:
            entry["linkID"] = a.link_id
        if a.link_id is not None and a.link_id % 2:
            entry["systemOnly"] = "TRUE"
        attributes.append(ldif_entry(f"CN={a.cn},{SCHEMA_DN}", entry))
    documents = ["".join(attributes)]
    for level in EXCHANGE_CLASS_LEVELS:
        classes = []
        for k in level:
            dn = f"CN={k.cn},{SCHEMA_DN}"
            entry = {
                "objectClass": ["top", "classSchema"],
                "cn": k.cn,
                "governsID": f"{OID_ARC}.2.{k.number}",
                "lDAPDisplayName": k.ldap_name,
                "adminDisplayName": k.cn,
                "subClassOf": k.sub_class_of,
                "objectClassCategory": 1,
                "rDNAttID": "cn",
                "possSuperiors": list(k.poss_superiors),
                "schemaIDGUID": _schema_guid(k.ldap_name),
                "defaultObjectCategory": dn,
                "defaultHidingValue": "TRUE",
                "systemOnly": "FALSE",
            }
            if k.may_contain:
                entry["mayContain"] = list(k.may_contain)
            classes.append(ldif_entry(dn, entry))
        documents.append("".join(classes))
    return documents


# ---- the directory's content ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExchangeServerSpec:
    """One msExchExchangeServer object as an administrator's directory would hold it."""

    name: str
    roles: int | None
    serial: str | None = None
    version_number: int | None = None
    fqdn: str | None = None  # written as ncacn_ip_tcp:<fqdn>
    network_address: tuple[str, ...] | None = None  # overrides the realistic set built from fqdn
    site: str | None = "HQ"
    dag: str | None = None
    admin_group_dn: str = AG_DN
    transport_children: bool = True
    computer_dns_host_name: str | None = None  # a computer object in CN=Computers with this dNSHostName

    @property
    def dn(self) -> str:
        return f"CN={self.name},CN=Servers,{self.admin_group_dn}"


@dataclass(frozen=True)
class DagSpec:
    name: str
    replication_port: int | None
    witness: str | None = None  # msExchFileShareWitness, as Exchange writes it: \\\\server\\share


@dataclass(frozen=True)
class DcSpec:
    """A domain controller that exists only as directory data (server + NTDS Settings objects)."""

    name: str
    fqdn: str
    site: str
    options: int  # bit 1: global catalog
    read_only: bool = False


@dataclass(frozen=True)
class Directory:
    """Everything the lab loads on top of a freshly provisioned domain."""

    sites: Mapping[str, tuple[str, ...]]  # site -> subnets (HQ exists after provisioning)
    dags: tuple[DagSpec, ...]
    servers: tuple[ExchangeServerSpec, ...]
    dcs: tuple[DcSpec, ...]
    legacy_admin_group: bool = True


def realistic_network_address(name: str, fqdn: str) -> tuple[str, ...]:
    return (
        f"ncacn_vns_spp:{name}",
        f"netbios:{name}",
        f"ncacn_np:{name}",
        f"ncacn_spx:{name}",
        f"ncacn_ip_tcp:{fqdn}",
        f"ncalrpc:{name}",
    )


LAB_DIRECTORY = Directory(
    sites={"HQ": ("10.1.0.0/16", "10.2.0.0/24"), "Branch": ("10.20.0.0/16",)},
    dags=(
        DagSpec("DAG01", 64400, "\\\\fsw01.lab.example.test\\DAG01.lab.example.test"),
        DagSpec("DAG02", None),
    ),
    servers=(
        ExchangeServerSpec(
            "EX2016-01",
            16439,
            "Version 15.1 (Build 32507.6)",
            1942063563,
            fqdn="ex2016-01.lab.example.test",
            dag="DAG01",
        ),
        ExchangeServerSpec(
            "EX2019-01", 16423, "Version 15.2 (Build 31118.7)", fqdn="ex2019-01.lab.example.test", dag="DAG01"
        ),
        ExchangeServerSpec(
            "EXSE-01",
            16423,
            "Version 15.2 (Build 32562.17)",
            site="Branch",
            fqdn="exse-01.lab.example.test",
            dag="DAG02",
        ),
        ExchangeServerSpec(
            "EDGE01",
            64,
            "Version 15.2 (Build 31544.4)",
            fqdn="edge01.perimeter.example.test",
            transport_children=False,
        ),
        # malformed or unusual objects, each must produce a warning naming its DN
        ExchangeServerSpec(
            "EX-NOSERIAL", 16423, None, 1942127850, fqdn="ex-noserial.lab.example.test", site="Branch"
        ),
        ExchangeServerSpec("EX-NOVERSION", 16423, "garbage", None, fqdn="ex-noversion.lab.example.test"),
        ExchangeServerSpec(
            "EX-BADADDR",
            16423,
            "Version 15.2 (Build 31544.4)",
            network_address=("netbios:EX-BADADDR", "ncacn_ip_tcp:!!not a host name!!"),
            computer_dns_host_name="ex-badaddr.lab.example.test",
        ),
        ExchangeServerSpec(
            "EX-ODDROLES",
            16423 | (1 << 20),
            "Version 15.2 (Build 31544.4)",
            fqdn="ex-oddroles.lab.example.test",
        ),
        ExchangeServerSpec(
            "EX-NOSITE", 16423, "Version 15.2 (Build 31544.4)", fqdn="ex-nosite.lab.example.test", site=None
        ),
        ExchangeServerSpec(
            "EX-PROVISIONED",
            4096,
            "Version 15.2 (Build 31544.4)",
            fqdn="ex-provisioned.lab.example.test",
            transport_children=False,
        ),
        # a stale object of the same name in a legacy administrative group
        ExchangeServerSpec(
            "EX2019-01",
            16423,
            "Version 15.2 (Build 30986.5)",
            fqdn="ex2019-01-old.lab.example.test",
            admin_group_dn=LEGACY_AG_DN,
            transport_children=False,
        ),
    ),
    dcs=(
        DcSpec("DC2", "dc2.lab.example.test", "Branch", options=0),
        DcSpec("RODC1", "rodc1.lab.example.test", "Branch", options=1, read_only=True),
    ),
)


def _server_entries(spec: ExchangeServerSpec, dag_dns: Mapping[str, str]) -> list[str]:
    attrs: dict[str, Value | Sequence[Value]] = {
        "objectClass": ["top", "server", "msExchExchangeServer"],
        "cn": spec.name,
        "legacyExchangeDN": f"/o={ORG}/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Configuration"
        f"/cn=Servers/cn={spec.name}",
        "msExchVersion": 4535486012416,
    }
    if spec.roles is not None:
        attrs["msExchCurrentServerRoles"] = spec.roles
    if spec.serial is not None:
        attrs["serialNumber"] = spec.serial
    if spec.version_number is not None:
        attrs["versionNumber"] = spec.version_number
    network = spec.network_address
    if network is None and spec.fqdn:
        network = realistic_network_address(spec.name, spec.fqdn)
    if network:
        attrs["networkAddress"] = list(network)
    if spec.site:
        attrs["msExchServerSite"] = f"CN={spec.site},{SITES_DN}"
    if spec.dag:
        attrs["msExchMDBAvailabilityGroupLink"] = dag_dns[spec.dag]
    entries = [ldif_entry(spec.dn, attrs)]
    if spec.transport_children:
        cfg = f"CN=Transport Configuration,{spec.dn}"
        entries.append(ldif_entry(cfg, {"objectClass": ["top", "msExchExchangeTransportCfgContainer"]}))
        for child, roles in (("Frontend", 16384), ("Mailbox", 2)):
            child_attrs = {
                k: v for k, v in attrs.items() if k not in ("msExchMDBAvailabilityGroupLink", "cn")
            }
            child_attrs["objectClass"] = [
                "top",
                "server",
                "msExchExchangeServer",
                "msExchExchangeTransportServer",
            ]
            child_attrs["msExchCurrentServerRoles"] = roles
            entries.append(ldif_entry(f"CN={child},{cfg}", child_attrs))
    if spec.computer_dns_host_name:
        entries.append(
            ldif_entry(
                f"CN={spec.name},CN=Computers,{DOMAIN_DN}",
                {
                    "objectClass": ["top", "person", "organizationalPerson", "user", "computer"],
                    "sAMAccountName": f"{spec.name}$",
                    "userAccountControl": 4096,
                    "dNSHostName": spec.computer_dns_host_name,
                },
            )
        )
    return entries


def _dc_entries(dc: DcSpec) -> list[str]:
    server_dn = f"CN={dc.name},CN=Servers,CN={dc.site},{SITES_DN}"
    ntds_class = "nTDSDSARO" if dc.read_only else "nTDSDSA"
    return [
        ldif_entry(server_dn, {"objectClass": ["top", "server"], "dNSHostName": dc.fqdn}),
        ldif_entry(
            f"CN=NTDS Settings,{server_dn}",
            {
                "objectClass": ntds_class,
                "options": dc.options,
                "invocationId": uuid.uuid5(uuid.NAMESPACE_DNS, dc.fqdn).bytes_le,
                "dMDLocation": SCHEMA_DN,
                "hasMasterNCs": [SCHEMA_DN, CONFIG_DN] + ([] if dc.read_only else [DOMAIN_DN]),
                "msDS-Behavior-Version": 4,
            },
        ),
    ]


def directory_ldif(directory: Directory) -> str:
    """The sites, the Exchange organisation and the extra DCs as one LDIF document."""
    out: list[str] = []
    for site, subnets in directory.sites.items():
        site_dn = f"CN={site},{SITES_DN}"
        if site != "HQ":  # provisioned with --site=HQ
            out.append(ldif_entry(site_dn, {"objectClass": ["top", "site"]}))
            out.append(ldif_entry(f"CN=NTDS Site Settings,{site_dn}", {"objectClass": "nTDSSiteSettings"}))
            out.append(ldif_entry(f"CN=Servers,{site_dn}", {"objectClass": ["top", "serversContainer"]}))
        for subnet in subnets:
            out.append(
                ldif_entry(
                    f"CN={subnet},CN=Subnets,{SITES_DN}",
                    {"objectClass": ["top", "subnet"], "siteObject": site_dn},
                )
            )
    for dc in directory.dcs:
        out += _dc_entries(dc)
    out.append(ldif_entry(EXCHANGE_DN, {"objectClass": ["top", "container", "msExchConfigurationContainer"]}))
    out.append(
        ldif_entry(
            ORG_DN, {"objectClass": ["top", "msExchOrganizationContainer"], "msExchVersion": 4535486012416}
        )
    )
    out.append(ldif_entry(ADMIN_GROUPS_DN, {"objectClass": ["top", "msExchAdminGroupContainer"]}))
    groups = [AG_DN] + ([LEGACY_AG_DN] if directory.legacy_admin_group else [])
    for group in groups:
        out.append(ldif_entry(group, {"objectClass": ["top", "msExchAdminGroup"]}))
        out.append(ldif_entry(f"CN=Servers,{group}", {"objectClass": ["top", "msExchServersContainer"]}))
    dag_container = f"CN=Database Availability Groups,{AG_DN}"
    out.append(ldif_entry(dag_container, {"objectClass": ["top", "msExchMDBAvailabilityGroupContainer"]}))
    dag_dns = {}
    for dag in directory.dags:
        dn = f"CN={dag.name},{dag_container}"
        dag_dns[dag.name] = dn
        attrs: dict[str, Value | Sequence[Value]] = {
            "objectClass": ["top", "msExchMDBAvailabilityGroup"],
            "msExchMDBAvailabilityGroupName": dag.name,
        }
        if dag.replication_port is not None:
            attrs["msExchMDBAvailabilityGroupReplicationPort"] = dag.replication_port
        if dag.witness is not None:
            attrs["msExchFileShareWitness"] = dag.witness
        out.append(ldif_entry(dn, attrs))
    for server in directory.servers:
        out += _server_entries(server, dag_dns)
    return "".join(out)


# ---- certificates ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificates:
    ca: Path  # the lab CA that signed the DC's certificate
    key: Path
    cert: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail verification


def issue_certificates(directory: Path, names: Sequence[str], addresses: Sequence[str]) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)

    def ca(stem: str, subject: str) -> tuple[Path, Path]:
        key, cert = directory / f"{stem}.key", directory / f"{stem}.crt"
        run(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        return key, cert

    ca_key, ca_cert = ca("ca", "/CN=Exchange Firewall Exporter Lab CA")
    _, other_cert = ca("other-ca", "/CN=Some Other CA")
    key, csr, cert = directory / "dc.key", directory / "dc.csr", directory / "dc.crt"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses])
    run(
        "openssl",
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={names[0]}",
    )
    extensions = directory / "dc.ext"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(extensions),
    )
    key.chmod(0o600)
    return Certificates(ca_cert, key, cert, other_cert)


# ---- processes -------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 here reaps only every ~2 s)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "Z")
    return state not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and _alive(int(entry.name)):
            members.append(int(entry.name))
    return members


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"samba exited with {process.returncode} before {host}:{port} answered"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host}:{port} did not answer within {timeout:g}s") from None
            time.sleep(0.05)


def provision(root: Path, *, realm: str, netbios: str, ip: str, password: str) -> None:
    """`samba-tool domain provision` of a one-DC domain (DC1, site HQ) serving only `ip`."""
    run(
        "samba-tool",
        "domain",
        "provision",
        f"--targetdir={root}",
        f"--realm={realm}",
        f"--domain={netbios}",
        f"--adminpass={password}",
        "--server-role=dc",
        "--dns-backend=SAMBA_INTERNAL",
        f"--host-name={DC_NAME}",
        f"--host-ip={ip}",
        "--site=HQ",
        "--option=dns forwarder = ",
        f"--option=interfaces = {ip}",
        "--option=bind interfaces only = yes",
    )


@dataclass
class SambaDC:
    """One `samba` process serving a provisioned directory from `root` on one address: a loopback alias,
    or an address inside a network namespace the test created (`netns`)."""

    root: Path
    ip: str
    certificates: Certificates | None
    realm: str = REALM
    netbios: str = NETBIOS_DOMAIN
    require_strong_auth: bool = True
    services: str = "ldap cldap kdc dns"
    netns: str | None = None
    wait_ports: tuple[int, ...] = ()  # default: LDAP (and LDAPS with TLS, DNS when served)
    process: subprocess.Popen[bytes] | None = None

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def write_conf(self) -> None:
        r = self.root
        for sub in ("run", "log", "cache", "state"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        tls = "tls enabled = no"
        if self.certificates is not None:
            c = self.certificates
            tls = f"tls enabled = yes\n\ttls keyfile = {c.key}\n\ttls certfile = {c.cert}"
            tls += f"\n\ttls cafile = {c.ca}"
        self.smb_conf.write_text(f"""[global]
\tnetbios name = {DC_NAME}
\trealm = {self.realm}
\tworkgroup = {self.netbios}
\tserver role = active directory domain controller
\tprivate dir = {r}/private
\tbinddns dir = {r}/bind-dns
\tlock directory = {r}
\tstate directory = {r}/state
\tcache directory = {r}/cache
\tpid directory = {r}/run
\tncalrpc dir = {r}/run/ncalrpc
\tlog file = {r}/log/samba.log
\tlogging = file
\tlog level = 1
\tinterfaces = {self.ip}
\tbind interfaces only = yes
\tdisable netbios = yes
\tdns forwarder =
\tserver services = {self.services}
\tdns update command = /bin/true
\tspn update command = /bin/true
\t{tls}
\tldap server require strong auth = {"yes" if self.require_strong_auth else "no"}
[sysvol]
\tpath = {r}/state/sysvol
\tread only = No
[netlogon]
\tpath = {r}/state/sysvol/{self.realm.lower()}/scripts
\tread only = No
""")

    def start(self, timeout: float = 30) -> SambaDC:
        command = ["samba", "--foreground", "--no-process-group", "-s", str(self.smb_conf)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with (self.root / "log" / "samba.stdout").open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        ports = self.wait_ports or (
            389,
            *((636,) if self.certificates else ()),
            *((53,) if "dns" in self.services.split() else ()),
        )
        try:
            for port in ports:
                wait_for_port(self.ip, port, timeout, self.process)
        except RuntimeError as exc:
            self.stop()
            tail = (self.root / "log" / "samba.stdout").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        """Stop samba's process group, then any samba-dcerpcd/rpcd_* that outlive it (by pidfile)."""
        pids: list[int] = []
        if self.process is not None:
            pgid = self.process.pid
            pids = _group_members(pgid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait(5)
            self.process = None
        for pidfile in (self.root / "run").glob("*.pid"):
            text = pidfile.read_text().strip()
            if text.isdigit() and _alive(int(text)):
                pid = int(text)
                pids.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids):
            if time.monotonic() > deadline:
                for p in pids:
                    if _alive(p):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                break
            time.sleep(0.05)

    def listening_ports(self) -> set[int]:
        """TCP ports a process of this DC listens on (ground truth for the endpoint mapper's answers)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        out = run(*prefix, "ss", "-Hltn", "src", self.ip)
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


@dataclass
class LoopbackAliases:
    """/32 aliases on `lo` inside 127.0.0.0/8; removes only the ones it added."""

    added: list[str] = field(default_factory=list)

    def add(self, address: str) -> None:
        if not address.startswith("127."):
            raise ValueError(f"{address}: the lab only uses loopback addresses")
        if f"inet {address}/" in run("ip", "-4", "addr", "show", "dev", "lo"):
            return
        run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        self.added.append(address)

    def remove_all(self) -> None:
        while self.added:
            subprocess.run(
                ["ip", "addr", "del", f"{self.added.pop()}/32", "dev", "lo"], capture_output=True, check=False
            )


@contextlib.contextmanager
def loopback_alias(address: str) -> Iterator[None]:
    """One /32 alias on `lo` for the duration (left alone if it was already there)."""
    aliases = LoopbackAliases()
    aliases.add(address)
    try:
        yield
    finally:
        aliases.remove_all()


# ---- the lab --------------------------------------------------------------------------------------------
@dataclass
class SambaLab:
    """One provisioned DC with the Exchange organisation loaded, and optionally a relaxed copy."""

    workdir: Path
    directory: Directory = LAB_DIRECTORY
    aliases: LoopbackAliases = field(default_factory=LoopbackAliases)
    dc: SambaDC | None = None
    relaxed_dc: SambaDC | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def certificates(self) -> Certificates:
        assert self.dc is not None and self.dc.certificates is not None
        return self.dc.certificates

    def build(self) -> SambaLab:
        require_samba()
        self.aliases.add(LAB_IP)
        root = self.workdir / "dc1"
        started = time.monotonic()
        provision(root, realm=REALM, netbios=NETBIOS_DOMAIN, ip=LAB_IP, password=ADMIN_PASSWORD)
        self.timings["provision"] = time.monotonic() - started
        certificates = issue_certificates(self.workdir / "tls", [DC_FQDN, DC_NAME], [LAB_IP, RELAXED_IP])
        self.dc = SambaDC(root, LAB_IP, certificates)
        self.dc.write_conf()
        started = time.monotonic()
        self.load([*exchange_schema_ldif(), directory_ldif(self.directory)])
        self.timings["schema+objects"] = time.monotonic() - started
        # the relaxed twin is copied now, while nothing holds the database open (42 MB, ~0.1 s)
        shutil.copytree(
            root,
            self.workdir / "dc1-relaxed",
            symlinks=True,
            ignore=shutil.ignore_patterns("run", "log", "*.sock", "msg.lock"),
        )
        return self

    def load(self, documents: Sequence[str]) -> None:
        """Apply LDIF documents offline (the DC must be stopped), one transaction each."""
        assert self.dc is not None and self.dc.process is None
        ldif_dir = self.workdir / "ldif"
        ldif_dir.mkdir(exist_ok=True)
        files = []
        for index, text in enumerate(documents):
            path = ldif_dir / f"{len(list(ldif_dir.iterdir())):03d}-{index}.ldif"
            path.write_text(text, encoding="utf-8")
            files.append(str(path))
        run(SYSTEM_PYTHON, "-I", str(HERE / "samba_offline.py"), str(self.dc.smb_conf), *files, timeout=900)

    def start(self) -> SambaLab:
        assert self.dc is not None
        started = time.monotonic()
        self.dc.start()
        self.timings["start"] = time.monotonic() - started
        return self

    def relaxed(self) -> SambaDC:
        """A second DC process serving a copy of the directory with simple binds allowed on plain LDAP."""
        if self.relaxed_dc is None:
            assert self.dc is not None
            self.aliases.add(RELAXED_IP)
            dc = SambaDC(
                self.workdir / "dc1-relaxed",
                RELAXED_IP,
                self.dc.certificates,
                require_strong_auth=False,
                services="ldap",
            )
            dc.write_conf()
            dc.start()
            self.relaxed_dc = dc
        return self.relaxed_dc

    def stop(self) -> None:
        for dc in (self.relaxed_dc, self.dc):
            if dc is not None:
                dc.stop()
        self.aliases.remove_all()
