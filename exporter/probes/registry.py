"""Every protocol check this build offers, by the name the port catalogue uses in its `check` column.

Nothing here needs an optional dependency (DCE/RPC and SMB are hand-rolled), so every name is always
present. `checks(cafile=...)` builds the TLS checks against a private CA (the system store otherwise);
`kerberos_principal` replaces the default probe principal (the target's own computer account).
"""

from __future__ import annotations

from exporter.engine.scheduler import Check
from exporter.probes import cldap, dns, http, kerberos, ldap, ntp, rpc, smb, smtp


def checks(cafile: str | None = None, kerberos_principal: str | None = None) -> dict[str, Check]:
    """name -> Check for the engine's `checks` argument."""
    table: dict[str, Check] = {
        "dns": dns.soa_check("udp"),
        "dns-tcp": dns.soa_check("tcp"),
        "kerberos": kerberos.as_req_check("udp", principal=kerberos_principal),
        "kerberos-tcp": kerberos.as_req_check("tcp", principal=kerberos_principal),
        "cldap": cldap.ldap_ping_check(),
        "ntp": ntp.check,
        "ldap-rootdse": ldap.rootdse_check(tls=False),
        "gc": ldap.rootdse_check(tls=False),
        "ldaps": ldap.rootdse_check(tls=True, cafile=cafile),
        "gc-ssl": ldap.rootdse_check(tls=True, cafile=cafile),
        "smtp": smtp.smtp_check(cafile=cafile),
        "rpc-epm": rpc.check,
        "smb": smb.check,
    }
    for name in http.VDIRS:
        table[f"https-health:{name}"] = http.health_check(name, cafile=cafile)
    return table


CHECKS: dict[str, Check] = checks()
