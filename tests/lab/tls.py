"""Certificates for TLS test peers, from a throw-away trustme CA.

LabPki.create(directory, name, address)  a CA and three server certificates for `name` (+ `address`):
    good        valid now, SAN = name and address
    expired     same names, not-after in the past
    wrong_name  valid now, but only for other.invalid
Each is written as PEM (cert chain and key) for servers that want files (Samba, aiosmtpd), and
`server_context(kind)` gives an ssl.SSLContext for asyncio servers. `other_ca` signed nothing here.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

KINDS = ("good", "expired", "wrong_name")


@dataclass(frozen=True)
class ServerFiles:
    cert: Path  # leaf + chain, PEM
    key: Path
    not_after: datetime.datetime


@dataclass(frozen=True)
class LabPki:
    ca_file: Path  # PEM of the CA that signed every server certificate here
    other_ca_file: Path  # PEM of a CA that signed nothing here
    servers: dict[str, ServerFiles]

    @classmethod
    def create(cls, directory: Path, name: str, address: str) -> LabPki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="exchange-firewall-exporter lab CA")
        other = trustme.CA(organization_name="some other CA")
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        plans = {
            "good": ((name, address), now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)),
            "expired": ((name, address), now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)),
            "wrong_name": (
                ("other.invalid",),
                now - datetime.timedelta(hours=1),
                now + datetime.timedelta(days=30),
            ),
        }
        servers = {}
        for kind, (names, not_before, not_after) in plans.items():
            leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
            cert, key = directory / f"{kind}.crt", directory / f"{kind}.key"
            cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            key.write_bytes(leaf.private_key_pem.bytes())
            key.chmod(0o600)
            servers[kind] = ServerFiles(cert, key, not_after)
        ca_file, other_file = directory / "ca.crt", directory / "other-ca.crt"
        ca.cert_pem.write_to_path(str(ca_file))
        other.cert_pem.write_to_path(str(other_file))
        return cls(ca_file, other_file, servers)

    def server_context(self, kind: str) -> ssl.SSLContext:
        files = self.servers[kind]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        return context
