"""The command line's flags: one parser for `serve`, `demo`, `check` and `discover`."""

from __future__ import annotations

import argparse

from exporter import __version__
from exporter.inventory.ldap_settings import AUTH_METHODS, DEFAULT_TIMEOUT, PASSWORD_ENV
from exporter.plan.planner import Vantage

DEFAULT_PORT = 10135
DEFAULT_LISTEN = f":{DEFAULT_PORT}"


def deprecated_spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Old flag spelling -> its namespaced name (`--mesh-port` -> `--mesh.port`): every flag is spelt the
    Prometheus way, a dotted namespace and hyphens within a name; the old spellings are accepted, with a
    warning, for one release."""
    found: dict[str, str] = {}
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:  # argparse has no public walk of its options
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
                continue
            names = action.option_strings
            if isinstance(action, argparse.BooleanOptionalAction):
                continue  # --x / --no-x: both current
            if len(names) > 1 and "." in names[0]:
                found.update(dict.fromkeys(names[1:], names[0]))
    return found


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    """The `discover` command's flags: the directory flags plus --timeout, --output, --log.level."""
    add_directory_arguments(parser, timeout_flags=("--timeout",))
    parser.add_argument(
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="yaml: a static inventory file; json: the same structure (default table)",
    )
    _log_flags(parser, level="warning")


def add_directory_arguments(
    parser: argparse.ArgumentParser, *, timeout_flags: tuple[str, ...] = ("--ldap.timeout", "--ldap-timeout")
) -> None:
    """How to reach Active Directory; shared by `discover` and `serve`."""
    ldap = parser.add_argument_group(
        "directory (the password comes from $"
        + PASSWORD_ENV
        + " or --bind-password-file, never the command line)"
    )
    ldap.add_argument(
        "--ldap.url",
        "--ldap-url",
        dest="ldap_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a DC to read, e.g. ldaps://dc1.example.com (repeat for fallbacks, tried in "
        "order; default: DCs from DNS SRV records)",
    )
    ldap.add_argument(
        "--ldap.bind-user",
        "--bind-user",
        dest="bind_user",
        metavar="USER",
        help="user@example.com or a DN (simple), EXAMPLE\\user (ntlm); kerberos uses the ticket",
    )
    ldap.add_argument(
        "--ldap.bind-password-file",
        "--bind-password-file",
        dest="bind_password_file",
        metavar="FILE",
        help="file holding the bind password",
    )
    ldap.add_argument(
        "--ldap.ca-file",
        "--ca-file",
        dest="ca_file",
        metavar="FILE",
        help="PEM CA certificate(s) to verify the DCs' TLS with (default: the system trust store)",
    )
    ldap.add_argument(
        "--ldap.starttls",
        "--starttls",
        dest="starttls",
        action="store_true",
        help="ldap:// on 389, upgraded with StartTLS",
    )
    ldap.add_argument(
        "--ldap.auth",
        "--auth",
        dest="auth",
        choices=AUTH_METHODS,
        default="simple",
        help="bind method (default simple)",
    )
    ldap.add_argument(
        "--ldap.allow-insecure-bind",
        "--allow-insecure-bind",
        dest="allow_insecure_bind",
        action="store_true",
        help="allow a simple bind over plain ldap:// (labs only: the password is sent in clear)",
    )
    ldap.add_argument(
        "--ldap.domain",
        "--domain",
        dest="domain",
        metavar="NAME",
        help="AD DNS domain for DNS SRV discovery (default: the resolver's search list)",
    )
    ldap.add_argument(
        "--ldap.site",
        "--site",
        dest="site",
        metavar="NAME",
        help="prefer this AD site's DCs in DNS SRV discovery",
    )
    ldap.add_argument(
        "--ldap.dns-server",
        "--dns-server",
        dest="dns_server",
        metavar="HOST[:PORT]",
        help="ask this DNS server for the SRV records (default: the host's resolver)",
    )
    ldap.add_argument(
        *timeout_flags,
        dest="ldap_timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per LDAP or DNS operation (default {DEFAULT_TIMEOUT:g})",
    )


def _log_flags(parser: argparse.ArgumentParser, level: str = "info") -> None:
    parser.add_argument(
        "--log.level", dest="log_level", default=level, choices=["debug", "info", "warn", "warning", "error"]
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="text",
        choices=["text", "logfmt", "json"],
        help="text (default), logfmt as Prometheus's exporters write it, or one JSON object a line",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="static inventory YAML (serve needs this or --ldap-url/--domain; check defaults to the demo)",
    )
    parser.add_argument(
        "--source",
        default=None,
        help="this agent's identity, an inventory member's FQDN or name "
        "(default: this host's FQDN; a name outside the inventory makes an observer)",
    )
    parser.add_argument(
        "--probe.connect-only",
        "--connect-only",
        dest="connect_only",
        action="store_true",
        help="bare TCP connects only: no protocol conversations (DNS, Kerberos, LDAP, SMTP, health pages...) "
        "and no UDP paths (the demo always runs like this: its listeners speak no protocol)",
    )
    parser.add_argument(
        "--probe.ca-file",
        dest="probe_ca_file",
        metavar="FILE",
        help="CA to verify the targets' TLS certificates with (LDAPS, SMTP STARTTLS, HTTPS; default: the "
        "system trust store). Verification failures are reported, never fatal",
    )
    parser.add_argument(
        "--probe.source-address",
        dest="source_address",
        default="",
        metavar="ADDR",
        help="bind every probe socket to this local address first (a multi-homed server: probe from its "
        "MAPI or its replication network); an address this host lacks, or of the other family than a "
        "target's, reads local_error (default: the OS chooses)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="probe only shard I of N of the paths (rendezvous hashing: several central probers split "
        "the targets, and adding one moves only its share)",
    )
    parser.add_argument(
        "--source.site",
        "--source-site",
        dest="source_site",
        default=None,
        metavar="SITE",
        help="this agent's AD site, for an agent outside the inventory (members take theirs from it)",
    )
    parser.add_argument(
        "--vantage",
        choices=[v.value for v in Vantage],
        default=None,
        help="override where this agent stands (default: from --source's inventory entry)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt (default 2)")
    parser.add_argument(
        "--attempts", type=int, default=3, help="silent attempts before a path reads filtered (default 3)"
    )
    parser.add_argument(
        "--probe.max-concurrency",
        "--max-concurrency",
        dest="max_concurrency",
        type=int,
        default=None,
        help="probes in flight (default: from fd limit)",
    )
    parser.add_argument(
        "--probe.enable-service",
        "--enable-service",
        dest="enable_service",
        action="append",
        default=[],
        metavar="SERVICE",
        help="probe an optional client service too (pop3, pop3s, imap, imaps, um-callrouter-sip...)",
    )
    parser.add_argument(
        "--locate.max-hops",
        dest="locate_max_hops",
        type=int,
        default=30,
        metavar="N",
        help="locate the device behind a blocked path with TTL-limited connects up to N hops (Linux, no "
        "privileges; 0 disables locating; default 30)",
    )
    parser.add_argument(
        "--locate.reverse-dns",
        dest="locate_reverse_dns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="name a located device by reverse DNS (cached, 2 s at most; default on)",
    )
    _log_flags(parser)
    parser.add_argument(
        "--log.file",
        dest="log_file",
        metavar="PATH",
        help="log to this file, rotated at 10 MB keeping 5 (default: stderr; a Windows service installed "
        "with `service install` logs to %%ProgramData%%\\exchange-firewall-exporter\\exporter.log)",
    )


def client_flags(group: argparse._ArgumentGroup, prefix: str, server: str, env: str = "") -> None:
    """--PREFIX.ca-file, --PREFIX.username and --PREFIX.password-file: how this agent, as a client, trusts
    and logs in to `server` (the peers, Prometheus); `env` names the variable the password may come from."""
    group.add_argument(
        f"--{prefix}.ca-file",
        dest=f"{prefix}_ca_file",
        metavar="FILE",
        help=f"CA to verify the TLS of {server} with (default: the system trust store)",
    )
    group.add_argument(
        f"--{prefix}.username", dest=f"{prefix}_username", help=f"basic-auth user for {server}"
    )
    group.add_argument(
        f"--{prefix}.password-file",
        dest=f"{prefix}_password_file",
        metavar="FILE",
        help=f"basic-auth password for {server}" + (f" (or ${env})" if env else ""),
    )


def _mesh_flags(parser: argparse.ArgumentParser) -> None:
    mesh = parser.add_argument_group("mesh (many agents adding up to the full pairwise picture)")
    mesh.add_argument(
        "--mesh",
        action="store_true",
        help="pull the other agents' paths into /matrix and /api/v1/mesh, and list them in /api/v1/sd",
    )
    mesh.add_argument(
        "--mesh.port",
        "--mesh-port",
        dest="mesh_port",
        type=int,
        default=None,
        help="the port agents listen on (default: ours)",
    )
    mesh.add_argument(
        "--mesh.members",
        "--mesh-members",
        dest="mesh_members",
        choices=["exchange", "all", "none"],
        default="exchange",
        help="which inventory members run an agent (default: the Exchange servers)",
    )
    mesh.add_argument(
        "--mesh.peer",
        "--mesh-peer",
        dest="mesh_peer",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="an extra agent, e.g. a client zone: client-vlan1=http://10.9.0.5:10135",
    )
    mesh.add_argument("--mesh.scheme", dest="mesh_scheme", choices=["http", "https"], default="http")
    client_flags(mesh, "mesh", "the peers", env="EXFW_MESH_PASSWORD")
    mesh.add_argument(
        "--mesh.advertise-address",
        dest="mesh_advertise",
        metavar="HOST[:PORT]",
        help="how peers and Prometheus reach this agent (default: its inventory address)",
    )
    prom = parser.add_argument_group(
        "the mesh and its history from Prometheus (preferred over pulling the peers when set)"
    )
    prom.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        metavar="URL",
        help="Prometheus (or Thanos, Mimir, Cortex, VictoriaMetrics) that scrapes every agent: /matrix and "
        "/api/v1/mesh read every agent's paths from it, and ?at=TIME shows any past moment",
    )
    prom.add_argument(
        "--prometheus.selector",
        dest="prometheus_selector",
        default="",
        metavar="MATCHERS",
        help='label matchers for the agents\' series, e.g. job="exchange-firewall-exporter" (default: none)',
    )
    prom.add_argument("--prometheus.bearer-token-file", dest="prometheus_bearer_token_file", metavar="FILE")
    client_flags(prom, "prometheus", "Prometheus")
    prom.add_argument(
        "--prometheus.timeout", dest="prometheus_timeout", type=float, default=10.0, metavar="SECONDS"
    )
    prom.add_argument(
        "--prometheus.lookback",
        dest="prometheus_lookback",
        default="10m",
        metavar="DURATION",
        help="how long an agent that stopped answering keeps its last known row (default 10m)",
    )
    prom.add_argument(
        "--prometheus.changes-window",
        dest="prometheus_changes_window",
        default="24h",
        metavar="DURATION",
        help="how far back the mesh-wide change log reaches (default 24h)",
    )


def _state_flags(parser: argparse.ArgumentParser, default_state: str | None) -> None:
    parser.add_argument(
        "--state.file",
        "--state-file",
        dest="state_file",
        default=default_state,
        metavar="PATH",
        help="SQLite baseline of what each path has been (default: /var/lib/exchange-firewall-exporter/"
        "state.sqlite when writable, else the user's state directory; '' keeps it in memory)",
    )
    parser.add_argument(
        "--state.block-after",
        "--block-after",
        dest="block_after",
        type=int,
        default=3,
        metavar="K",
        help="non-open probes in a row before a path is blocked (default 3)",
    )
    parser.add_argument(
        "--state.recover-after",
        "--recover-after",
        dest="recover_after",
        type=int,
        default=1,
        metavar="N",
        help="open probes before it recovers (default 1)",
    )
    parser.add_argument(
        "--state.retention-days",
        "--retention-days",
        dest="retention_days",
        type=float,
        default=30.0,
        help="a blocked path is 'newly blocked' when seen open within this many days (default 30)",
    )
    parser.add_argument(
        "--state.confirm-delay",
        "--confirm-delay",
        dest="confirm_delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="re-probe a path this soon after it stops (or starts) answering, instead of waiting an "
        "interval, so a change is confirmed in seconds (default 1; 0 disables)",
    )


def demo_break_default() -> float:
    from exporter.demo import BREAK_AFTER

    return BREAK_AFTER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange-firewall-exporter",
        description="Probe every network path an Exchange organisation needs and export the results "
        "to Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="probe continuously and serve /metrics (the default command)")
    _common(serve)
    serve.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help=f"address to serve on (default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--interval", type=float, default=30.0, help="seconds between probes of a path")
    add_directory_arguments(serve)
    _mesh_flags(serve)
    serve.add_argument(
        "--inventory.reload-interval",
        "--inventory-reload-interval",
        dest="inventory_reload_interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="check the --inventory file this often and re-plan when it changed (default 10; 0 disables); "
        "a file that no longer validates is reported and the running plan kept",
    )
    serve.add_argument(
        "--locate.every",
        dest="locate_every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="locate a blocked path when it turns blocked and again this often while it stays so (default "
        "300; 0 disables)",
    )
    serve.add_argument(
        "--discovery.interval",
        "--discovery-interval",
        dest="discovery_interval",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="re-read Active Directory this often (default 900); used with --ldap-url or --domain",
    )
    discover = sub.add_parser(
        "discover",
        help="read the organisation from Active Directory (a table, json, or an inventory file with "
        "--output yaml)",
    )
    add_discover_arguments(discover)
    demo = sub.add_parser("demo", help="serve the built-in demo organisation with real loopback listeners")
    _common(demo)
    demo.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN)
    demo.add_argument("--interval", type=float, default=15.0)
    demo.add_argument(
        "--demo.break-after",
        "--demo-break-after",
        dest="demo_break_after",
        type=float,
        default=demo_break_default(),
        metavar="SECONDS",
        help="after this long, EX19B's 2525 drops EX16A's packets, to show a newly blocked, one-way path "
        "(Linux; default 60)",
    )
    for sub_parser, default_state in ((serve, None), (demo, "")):
        _state_flags(sub_parser, default_state)
        sub_parser.add_argument(
            "--web.api-rate-limit",
            dest="web_api_rate",
            type=float,
            default=20.0,
            metavar="PER_SECOND",
            help="API and page requests per second per client (bursts of three times that); /metrics and the "
            "health checks have their own budget (default 20)",
        )
        sub_parser.add_argument(
            "--web.config.file",
            dest="web_config_file",
            metavar="FILE",
            help="TLS and basic auth, in the Prometheus exporter-toolkit format (see the README)",
        )
    service = sub.add_parser(
        "service",
        help="install, uninstall, start or stop the agent as a Windows service (install takes serve's flags)",
    )
    service.add_argument(
        "action",
        choices=("install", "uninstall", "start", "stop", "run"),
        help="what to do with the Windows service (run: what the service manager starts)",
    )
    service.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        metavar="SERVE FLAGS",
        help="the serve flags the service runs with (install), e.g. --ldap-url ldaps://dc1... --mesh",
    )
    _log_flags(service)
    check = sub.add_parser("check", help="probe every planned path once and exit 0/1/2")
    _common(check)
    add_directory_arguments(check)
    check.add_argument("--output", choices=["table", "json", "csv"], default="table")
    return parser
