"""The `discover` command: read the organisation from Active Directory and print it, as a table or as a
static inventory file (`--output yaml` is a file `--inventory` loads; json is the same structure).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TextIO

import yaml

from exporter.errors import ConfigError, DiscoveryError
from exporter.inventory.ldap import DiscoveryResult, discover
from exporter.inventory.static import inventory_to_dict
from exporter.settings import ldap_settings


def run_discover(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Exit 0 with the inventory on stdout and warnings on stderr; 2 on a config error; 1 when discovery
    failed."""
    stdout, stderr = out or sys.stdout, err or sys.stderr
    try:
        result = discover(ldap_settings(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    except DiscoveryError as exc:
        print(f"error: {exc}", file=stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=stderr)
    data = inventory_to_dict(result.inventory)
    if args.output == "json":
        json.dump(data, stdout, indent=2)
        stdout.write("\n")
    elif args.output == "yaml":
        stdout.write(_yaml_header(result))
        yaml.safe_dump(data, stdout, sort_keys=False, allow_unicode=True, default_flow_style=False)
    else:
        stdout.write(render_table(result))
    return 0


def _yaml_header(result: DiscoveryResult) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# discovered from {result.url} (forest {result.forest}) at {when}",
        f"# {len(result.warnings)} warning(s), printed on stderr",
        "# AD sites and subnets:",
        *(f"#   {site}: {', '.join(subnets) or '(no subnets)'}" for site, subnets in result.sites.items()),
    ]
    return "\n".join(lines) + "\n"


def render_table(result: DiscoveryResult) -> str:
    inventory = result.inventory
    rows: list[tuple[str, ...]] = [("kind", "name", "fqdn", "site", "roles / flags", "version", "dag")]
    for s in inventory.servers:
        dag = f"{s.dag}:{s.dag_replication_port}" if s.dag else ""
        rows.append(
            (
                "exchange",
                s.name,
                s.fqdn,
                s.site,
                ",".join(sorted(r.value for r in s.roles)),
                f"{s.version} ({s.version.product.value})",
                dag,
            )
        )
    for d in inventory.domain_controllers:
        flags = ",".join(f for f, on in (("gc", d.global_catalog), ("rodc", d.read_only)) if on) or "dc"
        rows.append(("dc", d.name, d.fqdn, d.site, flags, "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"organisation {inventory.organisation} from {result.url} (forest {result.forest}): "
        f"{len(inventory.servers)} Exchange servers, {len(inventory.domain_controllers)} DCs, "
        f"{len(result.warnings)} warning(s)",
        "sites:",
    ]
    lines += [f"  {site}: {', '.join(subnets) or '(no subnets)'}" for site, subnets in result.sites.items()]
    return "\n".join(lines) + "\n"
