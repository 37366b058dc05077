"""AD discovery end to end against a large directory: 2,000 Exchange servers and 500 DCs in a real Samba DC.

Builds the test lab's DC (tests/lab/samba.py: provision, Exchange schema, 127.0.77.1 on `lo`) and loads a
synthetic organisation offline:
  - N Exchange 2019 Mailbox servers, each with its two transport child objects (CN=Frontend, CN=Mailbox:
    they match msExchExchangeServer and must be filtered out), in S sites, in DAGs of 16
  - M domain controllers as server + NTDS Settings objects (every 2nd a GC, every 10th an RODC)
  - S sites with 2 subnets each
then times `discover()` as the service calls it: LDAPS with certificate verification, simple bind, paged
searches (500 a page), decode and build the Inventory. Each run opens its own connection. Goal: < 10 s.

Run as root from the repository root:

    .venv/bin/python -m bench.discovery [--servers 2000] [--dcs 500] [--sites 50] [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from exporter.inventory.ldap import discover
from exporter.inventory.ldap_settings import LdapSettings, Secret
from tests.lab import samba
from tests.lab.samba import DagSpec, DcSpec, Directory, ExchangeServerSpec, SambaLab

GOAL_SECONDS = 10.0
DAG_SIZE = 16


def synthetic_directory(servers: int, dcs: int, sites: int) -> Directory:
    site_names = [f"Site{i:02d}" for i in range(sites)]
    subnets = {
        name: (f"10.{i // 100}.{i % 100}.0/24", f"10.{100 + i // 100}.{i % 100}.0/24")
        for i, name in enumerate(site_names)
    }
    dags = tuple(DagSpec(f"DAG{i:03d}", 64327 + i % 2) for i in range((servers + DAG_SIZE - 1) // DAG_SIZE))
    exchange = tuple(
        ExchangeServerSpec(
            f"EX{i:04d}",
            16423,
            "Version 15.2 (Build 31544.4)",
            fqdn=f"ex{i:04d}.lab.example.test",
            site=site_names[i % sites],
            dag=dags[i // DAG_SIZE].name,
        )
        for i in range(servers)
    )
    controllers = tuple(
        DcSpec(
            f"BDC{i:03d}",
            f"bdc{i:03d}.lab.example.test",
            site_names[i % sites],
            options=i % 2,
            read_only=i % 10 == 0,
        )
        for i in range(dcs)
    )
    return Directory(
        sites={"HQ": (), **subnets}, dags=dags, servers=exchange, dcs=controllers, legacy_admin_group=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--dcs", type=int, default=500)
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)

    directory = synthetic_directory(args.servers, args.dcs, args.sites)
    objects = args.servers * 4 + args.dcs * 2 + args.sites * 5 + len(directory.dags)
    with tempfile.TemporaryDirectory(prefix="efx-bench-ad-") as workdir:
        lab = SambaLab(Path(workdir), directory=directory)
        try:
            started = time.monotonic()
            lab.build()
            build_seconds = time.monotonic() - started
            lab.start()
            settings = LdapSettings(
                urls=(f"ldaps://{samba.LAB_IP}",),
                bind_user=samba.ADMIN_UPN,
                password=Secret(samba.ADMIN_PASSWORD),
                ca_file=str(lab.certificates.ca),
                timeout=30,
            )
            durations = []
            result = None
            for _ in range(args.runs):
                started = time.monotonic()
                result = discover(settings)
                durations.append(time.monotonic() - started)
        finally:
            lab.stop()
    assert result is not None
    inventory = result.inventory
    # the 500 synthetic DCs plus the lab's own DC1
    if len(inventory.servers) != args.servers or len(inventory.domain_controllers) != args.dcs + 1:
        print(
            f"wrong counts: {len(inventory.servers)} servers, {len(inventory.domain_controllers)} DCs",
            file=sys.stderr,
        )
        return 1
    figures = {
        "servers": len(inventory.servers),
        "domain_controllers": len(inventory.domain_controllers),
        "sites": len(result.sites),
        "directory_objects_loaded": objects,
        "warnings": len(result.warnings),
        "lab_build_seconds": round(build_seconds, 2),
        "lab_timings": {k: round(v, 2) for k, v in lab.timings.items()},
        "discover_seconds": [round(d, 3) for d in durations],
        "discover_median_seconds": round(statistics.median(durations), 3),
        "discover_max_seconds": round(max(durations), 3),
        "goal_seconds": GOAL_SECONDS,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    verdict = "within" if max(durations) < GOAL_SECONDS else "OVER"
    print(
        f"discovery of {args.servers} Exchange servers + {args.dcs + 1} DCs: median "
        f"{statistics.median(durations):.2f}s, worst {max(durations):.2f}s "
        f"({verdict} the {GOAL_SECONDS:g}s goal)",
        file=sys.stderr,
    )
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
