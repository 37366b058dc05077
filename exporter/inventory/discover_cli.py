"""The `discover` command: read the organisation from Active Directory and print it, as a table or as a
static inventory file (`--output yaml` is a file `--inventory` loads; json is the same structure).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

import yaml

from exporter.errors import ConfigError, DiscoveryError
from exporter.inventory import dns_srv
from exporter.inventory.ldap import (
    AUTH_METHODS,
    DEFAULT_TIMEOUT,
    PASSWORD_ENV,
    DiscoveryResult,
    LdapSettings,
    discover,
    read_password,
)
from exporter.inventory.static import inventory_to_dict


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    """The `discover` command's flags: the directory flags plus --timeout, --output, --log.level."""
    add_directory_arguments(parser, timeout_flag="--timeout")
    parser.add_argument(
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="yaml: a static inventory file; json: the same structure (default table)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="warning", choices=["debug", "info", "warning", "error"]
    )


def add_directory_arguments(parser: argparse.ArgumentParser, *, timeout_flag: str = "--ldap-timeout") -> None:
    """How to reach Active Directory; shared by `discover` and `serve`."""
    ldap = parser.add_argument_group(
        "directory (the password comes from $"
        + PASSWORD_ENV
        + " or --bind-password-file, never the command line)"
    )
    ldap.add_argument(
        "--ldap-url",
        dest="ldap_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a DC to read, e.g. ldaps://dc1.example.com (repeat for fallbacks, tried in "
        "order; default: DCs from DNS SRV records)",
    )
    ldap.add_argument(
        "--bind-user",
        metavar="USER",
        help="user@example.com or a DN (simple), EXAMPLE\\user (ntlm); kerberos uses the ticket",
    )
    ldap.add_argument("--bind-password-file", metavar="FILE", help="file holding the bind password")
    ldap.add_argument(
        "--ca-file",
        metavar="FILE",
        help="PEM CA certificate(s) to verify the DCs' TLS with (default: the system trust store)",
    )
    ldap.add_argument("--starttls", action="store_true", help="ldap:// on 389, upgraded with StartTLS")
    ldap.add_argument("--auth", choices=AUTH_METHODS, default="simple", help="bind method (default simple)")
    ldap.add_argument(
        "--allow-insecure-bind",
        action="store_true",
        help="allow a simple bind over plain ldap:// (labs only: the password is sent in clear)",
    )
    ldap.add_argument(
        "--domain",
        metavar="NAME",
        help="AD DNS domain for DNS SRV discovery (default: the resolver's search list)",
    )
    ldap.add_argument("--site", metavar="NAME", help="prefer this AD site's DCs in DNS SRV discovery")
    ldap.add_argument(
        "--dns-server",
        metavar="HOST[:PORT]",
        help="ask this DNS server for the SRV records (default: the host's resolver)",
    )
    ldap.add_argument(
        timeout_flag,
        dest="ldap_timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per LDAP or DNS operation (default {DEFAULT_TIMEOUT:g})",
    )


def wants_directory(args: argparse.Namespace) -> bool:
    """Whether the flags ask for AD discovery (an LDAP URL, or a domain to find DCs in)."""
    return bool(getattr(args, "ldap_urls", None) or getattr(args, "domain", None))


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> LdapSettings:
    """The validated LDAP settings the flags describe (ConfigError when they are inconsistent)."""
    return LdapSettings(
        urls=tuple(args.ldap_urls or ()),
        bind_user=args.bind_user,
        password=read_password(args.bind_password_file, environ),
        ca_file=args.ca_file,
        starttls=args.starttls,
        auth=args.auth,
        allow_insecure_bind=args.allow_insecure_bind,
        domain=args.domain,
        site=args.site,
        dns_server=dns_srv.parse_nameserver(args.dns_server) if args.dns_server else None,
        timeout=args.ldap_timeout,
    )


def run_discover(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Exit 0 with the inventory on stdout and warnings on stderr; 2 on a config error; 1 when discovery
    failed."""
    stdout, stderr = out or sys.stdout, err or sys.stderr
    try:
        result = discover(settings_from_args(args))
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
