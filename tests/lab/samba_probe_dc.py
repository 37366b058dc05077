"""A Samba AD DC serving what the protocol probes speak to: DNS, Kerberos, CLDAP, LDAP/LDAPS/GC, the RPC
endpoint mapper with its dynamic ports, and SMB.

    template()                        provision PROBE.EXAMPLE.TEST once per process (~5 s) into a temp dir
    ProbeDC(ip, workdir, pki).start() copy the template (0.1 s), write smb.conf for `ip`, run `samba`;
                                      `netns=` runs it inside a network namespace the test created
    ProbeDC.stop()                    stop it (tests/lab/samba.py's SambaDC.stop), then delete the copy

The process, configuration and loopback alias are tests/lab/samba.py's; this module adds its own small
domain (no Exchange schema) and more `server services` (rpc, s3fs). Missing tools raise, never skip.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from tests.lab.samba import Certificates, SambaDC, provision, require_samba
from tests.lab.tls import LabPki

REALM = "PROBE.EXAMPLE.TEST"
DOMAIN = "probe.example.test"
NETBIOS = "PROBE"
DC_FQDN = f"dc1.{DOMAIN}"
DC_IP = "127.0.78.1"
ADMIN_PASSWORD = "Probe-Admin-Pass1!"  # a lab secret for a lab domain
ALL_SERVICES = "ldap cldap kdc dns rpc s3fs"

_template: Path | None = None


def template() -> Path:
    """The provisioned directory, once per process; removed at exit."""
    global _template
    if _template is None:
        require_samba()
        base = Path(tempfile.mkdtemp(prefix="efx-probe-dc-"))
        atexit.register(shutil.rmtree, base, True)
        root = base / "template"
        provision(root, realm=REALM, netbios=NETBIOS, ip=DC_IP, password=ADMIN_PASSWORD)
        _template = root
    return _template


class ProbeDC(SambaDC):
    """A copy of the template served on `ip` (TLS with the lab PKI's "good" certificate when given)."""

    def __init__(
        self,
        ip: str,
        workdir: Path,
        pki: LabPki | None = None,
        *,
        services: str = ALL_SERVICES,
        netns: str | None = None,
        wait_ports: tuple[int, ...] = (389, 135),
    ) -> None:
        certificates = None
        if pki is not None:
            good = pki.servers["good"]
            certificates = Certificates(pki.ca_file, good.key, good.cert, pki.other_ca_file)
        super().__init__(
            workdir / f"dc-{ip}",
            ip,
            certificates,
            realm=REALM,
            netbios=NETBIOS,
            services=services,
            netns=netns,
            wait_ports=wait_ports,
        )
        self.pki = pki

    def start(self, timeout: float = 30) -> ProbeDC:
        shutil.copytree(
            template(),
            self.root,
            symlinks=True,
            ignore=shutil.ignore_patterns("run", "log", "*.sock", "msg.lock"),
        )
        self.write_conf()
        super().start(timeout)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)  # 42 MB a copy: pytest keeps old tmp dirs around
