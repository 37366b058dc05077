"""Every protocol check this build offers, by the name the port catalogue uses in its `check` column.

Nothing here needs an optional dependency (DCE/RPC and SMB are hand-rolled), so every name is always
present. `checks(cafile=...)` builds the TLS checks against a private CA (the system store otherwise);
`kerberos_principal` replaces the default probe principal (the target's own computer account).
"""

from __future__ import annotations

import asyncio

from exporter.probes import cldap, dns, http, kerberos, ldap, ntp, rpc, smb, smtp
from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.outcome import Outcome, State


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
    table["https-health"] = all_health_pages({name: table[f"https-health:{name}"] for name in http.VDIRS})
    return table


def all_health_pages(pages: dict[str, Check]) -> Check:
    """One check for port 443: every healthcheck.htm page, fetched concurrently, folded into one Outcome.

    The connectivity verdict is the pages' (they share the port); each page's health is a detail
    ("health:<vdir>", "healthy" | ...) for people and a sub-check (vdir, healthy?) from which the exporter
    makes one exchange_protocol_up series each.
    """

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        names = list(pages)
        results = await asyncio.gather(*(pages[n](resolved, target, timeout, attempts) for n in names))
        answered = [o for o in results if o.state is State.OPEN]
        lead = answered[0] if answered else results[0]
        details = dict(lead.details)
        for key in [k for k in details if k.startswith("health")]:
            del details[key]
        healthy = 0
        subchecks: list[tuple[str, bool]] = []
        for name, outcome in zip(names, results, strict=True):
            page = dict(outcome.details)
            verdict = page.get("health") or page.get("protocol") or outcome.state.value
            details[f"health:{name}"] = verdict
            healthy += verdict == "healthy"
            subchecks.append((name, verdict == "healthy"))
        sick = [
            f"{n}: {o.evidence}"
            for n, o in zip(names, results, strict=True)
            if dict(o.details).get("health") != "healthy"
        ]
        if lead.state is not State.OPEN:
            evidence = lead.evidence
        else:
            evidence = f"{healthy}/{len(names)} health pages healthy" + (f"; {sick[0]}" if sick else "")
        expiries = [o.cert_expiry for o in results if o.cert_expiry is not None]
        return Outcome(
            lead.state,
            max((o.rtt for o in results if o.rtt is not None), default=None),
            evidence[:300],
            max(o.attempts for o in results),
            tuple(details.items()),
            min(expiries) if expiries else None,
            lead.protocol_ok,
            tuple(sorted(subchecks)),
        )

    return check


CHECKS: dict[str, Check] = checks()
