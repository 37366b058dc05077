"""Grafana dashboards and Prometheus rules as code: dashboards/*.json and alerts/exchange-firewall.rules.yml.

    python -m dashboards.build            # regenerate the committed JSON and the rule file
    python -m dashboards.build --check    # exit 1 if either is out of date (the tests do this)
    python -m dashboards.build --job-selector 'job="exfw"' --matrix-url https://ex01.contoso.com:10135 \\
        --runbook-url https://wiki.contoso.com/exchange-firewall/runbooks.md --out DIR

Mixin style: one Config, from these flags, makes both. `--job-selector` (default
`job="exchange-firewall-exporter"`) goes into every selector of the rules and into the dashboards' `job`
variable; `--matrix-url` (default http://localhost:10135, any agent: each shows the whole mesh) is where
the incident table's rows link (`/matrix?source=..&target=..`), also a dashboard variable; `--runbook-url`
(default docs/runbooks.md on GitHub) is the base of every alert's `runbook_url` (`<base>#<alertname
lowercased>`). The committed files hold the defaults: a customised copy (the five dashboards and
exchange-firewall.rules.yml, side by side) goes to `--out DIR`, and `--check` compares the defaults only.

Every dashboard has the datasource, job and instance variables, then site, role and source; every query
uses them, and every panel says what it shows and what to do with it. Queries use the metric names
documented in the README.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards import rules

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["exchange", "firewall", "exchange-firewall-exporter"]

#: the selectors every query carries: the exporters picked by the job and instance variables ...
SEL = 'job=~"$job", instance=~"$instance"'
#: ... and, for per-path series, the site, role and source variables
PATH = (
    f'{SEL}, source=~"$source", source_site=~"$source_site", target_site=~"$target_site", '
    'target_role=~"$role"'
)
#: the labels that name one path (a series of each per-path metric), and those of its location
ONE_PATH = "job, instance, source, target, port, proto, family, endpoint"
LOCATED = "job, instance, source, target, port, proto, family"

DEFAULT_RUNBOOK_URL = (
    "https://github.com/exchange-firewall-exporter/exchange-firewall-exporter/blob/main/docs/runbooks.md"
)
_MATCHER = r'\s*[a-zA-Z_]\w*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"{_MATCHER}(,{_MATCHER})*")


@dataclass(frozen=True)
class Config:
    """What a site changes: which Prometheus job holds the exporters, where the matrix and runbooks are."""

    job_selector: str = 'job="exchange-firewall-exporter"'
    matrix_url: str = "http://localhost:10135"
    runbook_url: str = DEFAULT_RUNBOOK_URL

    def __post_init__(self) -> None:
        if not _SELECTOR.fullmatch(self.job_selector):
            raise ValueError(
                f"job selector {self.job_selector!r} is not a list of PromQL label matchers, "
                'e.g. job="exchange-firewall-exporter"'
            )
        for name in ("matrix_url", "runbook_url"):
            value = getattr(self, name)
            if not re.fullmatch(r"https?://[^\s#]+", value):
                raise ValueError(f"{name} {value!r} must be an absolute http(s) URL without a #fragment")
        object.__setattr__(self, "matrix_url", self.matrix_url.rstrip("/"))


def query(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(PromQueryFormat.TABLE)
    return q


def variables(config: Config, *extra: Any) -> list[Any]:
    def label_var(name: str, label: str, metric_label: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(f"label_values(exchange_path_up{{{SEL}}}, {metric_label})")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    everything = model.VariableOption(selected=True, text="All", value="$__all")
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        # `up` names the exporters even while they are down; "All" means every job the selector allows
        db.QueryVariable("job")
        .label("Job")
        .datasource(DS)
        .query(f"label_values(up{{{config.job_selector}}}, job)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(everything),
        db.QueryVariable("instance")
        .label("Instance (agent)")
        .datasource(DS)
        .query('label_values(up{job=~"$job"}, instance)')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(everything),
        label_var("source_site", "Source site", "source_site"),
        label_var("target_site", "Target site", "target_site"),
        label_var("role", "Target role", "target_role"),
        label_var("source", "Source (agent)", "source"),
        *extra,
        db.TextBoxVariable("matrix_url")
        .label("Matrix (any agent)")
        .description("Base URL of an agent's /matrix page: the incident table's rows link there.")
        .default_value(config.matrix_url),
    ]


def base(config: Config, uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
        .links(
            [
                db.DashboardLink("Exchange firewall")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["exchange-firewall-exporter"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True),
                db.DashboardLink("Matrix")
                .url("${matrix_url}/matrix")
                .target_blank(True)
                .icon("external link"),
                db.DashboardLink("Runbooks").url(config.runbook_url).target_blank(True).icon("doc"),
            ]
        )
    )


def up_down_mappings() -> list[Any]:
    return [
        model.ValueMap(
            options={
                "0": model.ValueMappingResult(text="NOT SUPPORTED", color="red", index=0),
                "1": model.ValueMappingResult(text="supported", color="green", index=1),
            }
        )
    ]


#: how a blocked path fails (the `state` label): the word, what it means on the wire, and a colour
HOW = {
    "filtered": ("filtered: no answer (a drop)", "red"),
    "refused": ("refused: a TCP reset", "orange"),
    "unreachable": ("unreachable: ICMP error", "purple"),
    "dns_error": ("dns_error: name did not resolve", "blue"),
    "local_error": ("local_error: the prober failed", "text"),
    "open": ("open", "green"),
}


def how_mappings() -> list[Any]:
    return [
        model.ValueMap(
            options={
                state: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (state, (text, color)) in enumerate(HOW.items())
            }
        )
    ]


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def transformation(id_val: str, **options: Any) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val=id_val, options=options)


def organize(
    order: Sequence[str], rename: dict[str, str] | None = None, hide: Sequence[str] = ()
) -> model.DataTransformerConfig:
    """Grafana's organize transformation: column order, names, and the columns left out."""
    return transformation(
        "organize",
        indexByName={name: index for index, name in enumerate(order)},
        renameByName=rename or {},
        excludeByName=dict.fromkeys(["Time", "__name__", *hide], True),
    )


def prop(id_val: str, value: Any) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val=id_val, value=value)


def with_how_and_since(paths: str, selector: str = PATH) -> str:
    """One row per path of `paths` (an expression whose series name paths), valued with the time it
    entered its current status (ms, for Grafana's date units) and labelled with its state (how it fails)
    and, once located, verdict, hop, device and device_name (where). One query and one value column, so
    the table needs no joins in Grafana."""
    core = (
        f"(exchange_path_state_since_timestamp_seconds{{{selector}}} * 1000)\n"
        f"  * on ({ONE_PATH}) group_left (state) (exchange_path_state{{{selector}}} == 1)\n"
        f"  and on ({ONE_PATH}) ({paths})"
    )
    located = f"topk by ({LOCATED}) (1, exchange_path_block_location_info{{{selector}}})"
    return (
        f"(\n  ({core})\n  * on ({LOCATED}) group_left (verdict, hop, device, device_name) {located}\n)\n"
        f"or on ({ONE_PATH})\n({core})"
    )


PATH_COLUMNS = ["source", "target", "port", "proto", "family", "endpoint", "service", "state", "Value"]
WHERE_COLUMNS = ["verdict", "hop", "device", "device_name"]
HIDDEN_PATH_LABELS = ["job", "instance", "kind", "source_site", "target_site", "target_role"]


def paths_table(
    config: Config, title: str, description: str, paths: str, *, selector: str = PATH, height: int = 10
) -> table.Panel:
    """A table of paths: source, target, port, service, how (state), since, where (the location), each
    row linking the path's cell of the matrix page."""
    link = (
        "${matrix_url}/matrix?source=${__data.fields.source:percentencode}"
        "&target=${__data.fields.target:percentencode}"
    )
    return (
        table.Panel()
        .title(title)
        .description(description)
        .span(24)
        .height(height)
        .with_target(query(with_how_and_since(paths, selector), instant=True))
        .with_transformation(transformation("merge"))
        .with_transformation(
            organize(
                [*PATH_COLUMNS, *WHERE_COLUMNS],
                {"state": "how", "Value": "since", "verdict": "where", "device_name": "device name"},
                HIDDEN_PATH_LABELS,
            )
        )
        .override_by_name(
            "how",
            [prop("mappings", how_mappings()), prop("custom.cellOptions", {"type": "color-background"})],
        )
        .override_by_name("since", [prop("unit", "dateTimeFromNow")])
        .data_links(
            [
                db.DashboardLink("Open ${__data.fields.source} -> ${__data.fields.target} in the matrix")
                .url(link)
                .target_blank(True)
            ]
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("since").desc(True)])
    )


def site_matrix(title: str, description: str, expr: str) -> table.Panel:
    """A heatmap as a table: one row per source site, one column per target site, coloured by count."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .span(12)
        .height(8)
        .with_target(query(expr, instant=True))
        .with_transformation(transformation("merge"))
        .with_transformation(
            transformation(
                "groupingToMatrix", columnField="target_site", rowField="source_site", valueField="Value"
            )
        )
        .with_transformation(organize([], {"source_site\\target_site": "source site \\ target site"}))
        .thresholds(thresholds((None, "green"), (1, "orange"), (5, "red")))
        .override_by_field_type("number", [prop("custom.cellOptions", {"type": "color-background"})])
        .no_value("no paths")
    )


# ---- the dashboards ------------------------------------------------------------------------------------


def incident(config: Config) -> db.Dashboard:
    newly = f"exchange_path_newly_blocked{{{PATH}}} == 1"
    host_cut = (
        f"min by (job, instance, source, target) (exchange_path_blocked{{{PATH}}}) == 1\n"
        f"and on (job, instance, source, target) count by (job, instance, source, target) "
        f"(exchange_path_blocked{{{PATH}}}) > 1"
    )
    path_legend = "{{source}} -> {{target}}:{{port}}/{{proto}} {{service}} {{family}}"
    one = "source, target, port, proto, service, family"  # a timeline row: one path, whichever agent
    return (
        base(
            config,
            "exfw-incident",
            "Exchange firewall: incident",
            "For the on-call engineer: which source -> target:port broke, since when, how and where. "
            "Start at the table; each row opens the path in the matrix page.",
        )
        .time("now-3h", "now")
        .variables(variables(config))
        .with_row(db.Row("What broke"))
        .with_panel(
            stat.Panel()
            .title("Newly blocked paths")
            .description(
                "Paths that worked within the retention window and are blocked now: the ones that page "
                "(ExchangeRequiredPathNewlyBlocked). 0 means nothing that used to work is broken."
            )
            .span(6)
            .height(5)
            .with_target(query(f"count({newly}) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Hosts cut off entirely")
            .description(
                "Source/target pairs with every path blocked: the host is down, unrouted or firewalled "
                "entirely (ExchangeTargetUnreachable, one page instead of one per port)."
            )
            .span(6)
            .height(5)
            .with_target(query(f"count({host_cut}) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("First break")
            .description(
                "When the oldest of the newly blocked paths turned blocked (after the exporter's "
                "hysteresis): compare it with the network team's change log."
            )
            .span(6)
            .height(5)
            .unit("dateTimeFromNow")
            .no_value("nothing newly blocked")
            .with_target(
                query(
                    f"min(exchange_path_state_since_timestamp_seconds{{{PATH}}} "
                    f"and on ({ONE_PATH}) ({newly})) * 1000"
                )
            )
        )
        .with_panel(
            stat.Panel()
            .title("Pages firing")
            .description(
                "Critical exchange-firewall alerts firing in this Prometheus now (Alertmanager groups "
                "them by site pair and inhibits per-port pages of a host that is cut off)."
            )
            .span(6)
            .height(5)
            .with_target(
                query(
                    'count(ALERTS{alertstate="firing", severity="critical", alertname=~"Exchange.*", '
                    f"{SEL}}}) or vector(0)"
                )
            )
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            paths_table(
                config,
                "Newly blocked now",
                "Every path that used to work and is blocked now. how: filtered (no answer: a drop), "
                "refused (a TCP reset), unreachable (an ICMP error from a router or firewall). since: "
                "when it turned blocked. where: the exporter's TTL-limited trace (dropped / rejected / "
                "reset) with the hop and device; empty until located (seconds). Click a row for the "
                "path's cell in the matrix, with the evidence and the change log.",
                newly,
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Newly blocked paths over time")
            .description(
                "One row per path that was newly blocked at some point of the time range: red while "
                "blocked, green while open. Paths of one host turning red together: the host; many hosts "
                "of one site pair at one moment: a firewall change between the sites."
            )
            .span(24)
            .height(10)
            .with_target(
                query(
                    f"max by ({one}) (exchange_path_blocked{{{PATH}}})\n"
                    f"and on ({one})\n"
                    f"(max by ({one}) "
                    f"(max_over_time(exchange_path_newly_blocked{{{PATH}}}[$__range] @ end())) == 1)",
                    path_legend,
                )
            )
            .mappings(
                [
                    model.ValueMap(
                        options={
                            "0": model.ValueMappingResult(text="open", color="green", index=0),
                            "1": model.ValueMappingResult(text="blocked", color="red", index=1),
                        }
                    )
                ]
            )
            .show_value(common.VisibilityMode.NEVER)
            .merge_values(True)
            .row_height(0.8)
            .fill_opacity(80)
        )
        .with_row(db.Row("Where, site by site"))
        .with_panel(
            site_matrix(
                "Newly blocked paths by site pair",
                "Rows: source site; columns: target site; cells: paths that used to work and are blocked "
                "now. One hot cell is one firewall between two sites; a hot column is one site "
                "unreachable.",
                f"sum by (source_site, target_site) (exchange_path_newly_blocked{{{PATH}}})",
            )
        )
        .with_panel(
            site_matrix(
                "Blocked paths by site pair (all)",
                "As on the left, counting every blocked path: also those that never worked (a "
                "misconfiguration to fix, not paging).",
                f"sum by (source_site, target_site) (exchange_path_blocked{{{PATH}}})",
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Path changes")
            .description(
                "Paths changing status per interval (open->blocked, pending->blocked, blocked->open), "
                "counted by the agents: a spike marks the moment of a change on the network."
            )
            .span(24)
            .height(7)
            .with_target(
                query(
                    f"sum by (from, to) (increase(exchange_path_changes_total{{{SEL}}}[$__rate_interval]))",
                    "{{from}} -> {{to}}",
                )
            )
            .min(0)
        )
    )


def overview(config: Config) -> db.Dashboard:
    site_pair = "source_site, target_site, kind"
    return (
        base(
            config,
            "exfw-overview",
            "Exchange firewall: overview",
            "Microsoft's supportability verdict, blocked and newly blocked paths, and the site-by-site "
            "picture.",
        )
        .variables(variables(config))
        .with_row(db.Row("Verdict"))
        .with_panel(
            stat.Panel()
            .title("Supportability (worst source)")
            .span(6)
            .height(5)
            .description("Compliant only when every required Exchange-Exchange and Exchange-DC path is open.")
            .with_target(query(f'min(exchange_supportability_compliant{{{SEL}, source=~"$source"}})'))
            .mappings(up_down_mappings())
            .thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            stat.Panel()
            .title("Newly blocked required paths")
            .span(6)
            .height(5)
            .description("Paths that used to work and are blocked now: these page.")
            .with_target(
                query(f'sum(exchange_path_newly_blocked{{{PATH}, kind=~"exchange-.*"}}) or vector(0)')
            )
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Blocked paths (all kinds)")
            .span(6)
            .height(5)
            .description(
                "Every path blocked after the exporter's hysteresis, whether it ever worked or not, "
                "client and Edge paths included (those may be filtered legitimately)."
            )
            .with_target(query(f"sum(exchange_path_blocked{{{PATH}}}) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "orange")))
        )
        .with_panel(
            stat.Panel()
            .title("Paths probed")
            .span(6)
            .height(5)
            .description("Paths the selected agents probe (one per source, target, port and address family).")
            .with_target(query(f"count(exchange_path_up{{{PATH}}})"))
        )
        .with_row(db.Row("Site by site"))
        .with_panel(
            table.Panel()
            .title("Site pairs: blocked of all paths")
            .span(12)
            .height(9)
            .description(
                "One row per source site, target site and path kind: paths newly blocked (they page), "
                "blocked (any), and probed."
            )
            .with_target(
                query(f"sum by ({site_pair}) (exchange_path_newly_blocked{{{PATH}}})", instant=True, ref="A")
            )
            .with_target(
                query(f"sum by ({site_pair}) (exchange_path_blocked{{{PATH}}})", instant=True, ref="B")
            )
            .with_target(query(f"count by ({site_pair}) (exchange_path_up{{{PATH}}})", instant=True, ref="C"))
            .with_transformation(transformation("merge"))
            .with_transformation(
                organize(
                    ["source_site", "target_site", "kind", "Value #A", "Value #B", "Value #C"],
                    {
                        "source_site": "source site",
                        "target_site": "target site",
                        "Value #A": "newly blocked",
                        "Value #B": "blocked",
                        "Value #C": "paths",
                    },
                )
            )
            .override_by_name(
                "newly blocked",
                [
                    prop("custom.cellOptions", {"type": "color-text"}),
                    prop(
                        "thresholds",
                        {
                            "mode": "absolute",
                            "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                        },
                    ),
                ],
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Blocked paths by site pair")
            .span(12)
            .height(9)
            .description("Blocked paths between each pair of sites over time: when did it start, is it over.")
            .with_target(
                query(
                    f"sum by (source_site, target_site) (exchange_path_blocked{{{PATH}}})",
                    "{{source_site}} -> {{target_site}}",
                )
            )
            .min(0)
        )
        .with_row(db.Row("Blocked now"))
        .with_panel(
            paths_table(
                config,
                "Newly blocked (paging)",
                "Paths that worked within the retention window and are blocked now, with how they fail, "
                "since when and where. The incident dashboard has the same table with its history.",
                f"exchange_path_newly_blocked{{{PATH}}} == 1",
                height=8,
            )
        )
        .with_panel(
            paths_table(
                config,
                "Never open (to fix, not paging)",
                "Paths blocked since they were first probed: a firewall that was never opened, or an "
                "inventory that names the wrong role or version. Not an incident; on a required path a "
                "violation of Microsoft's rule all the same (ExchangeRequiredPathNeverOpen warns).",
                f"exchange_path_blocked{{{PATH}}} == 1 unless on ({ONE_PATH}) "
                f"exchange_path_newly_blocked{{{PATH}}} == 1",
                height=8,
            )
        )
    )


def server_detail(config: Config) -> db.Dashboard:
    target = (
        db.QueryVariable("server")
        .label("Server")
        .datasource(DS)
        .query(f"label_values(exchange_path_up{{{SEL}}}, target)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    to_server = f'{SEL}, target=~"$server", source=~"$source"'
    from_server = f'{SEL}, source=~"$server"'
    return (
        base(
            config,
            "exfw-server",
            "Exchange firewall: server detail",
            "Every port to and from one server, by source, over time.",
        )
        .variables(variables(config, target))
        .with_row(db.Row("To this server"))
        .with_panel(
            paths_table(
                config,
                "Ports of $server, by source (now)",
                "Every probed path to $server: its state (how), since when, and where it is blocked when "
                "it is.",
                f"exchange_path_up{{{to_server}}}",
                selector=to_server,
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Open (1) / not (0) per source and port")
            .span(12)
            .height(9)
            .description("The last probe of each path to $server: 1 open, 0 anything else.")
            .with_target(
                query(
                    f"exchange_path_up{{{to_server}}}",
                    "{{source}} -> {{port}}/{{proto}} {{service}}",
                )
            )
            .min(0)
            .max(1)
        )
        .with_panel(
            timeseries.Panel()
            .title("Connect time")
            .span(12)
            .height(9)
            .unit("s")
            .description(
                "Time to the answer (SYN-ACK, reset or ICMP error) or to giving up: a filtered path sits at "
                "the timeout."
            )
            .with_target(
                query(
                    f"exchange_path_connect_seconds{{{to_server}}}",
                    "{{source}} -> {{port}}/{{proto}}",
                )
            )
        )
        .with_row(db.Row("From this server (its own agent)"))
        .with_panel(
            paths_table(
                config,
                "Paths probed by $server's agent (now)",
                "Every path the agent on $server probes: how, since when, and where it is blocked.",
                f"exchange_path_up{{{from_server}}}",
                selector=from_server,
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Blocked paths from $server")
            .span(24)
            .height(8)
            .description("Blocked paths from $server's agent, by target, over time.")
            .with_target(query(f"sum by (target) (exchange_path_blocked{{{from_server}}})", "{{target}}"))
            .min(0)
        )
    )


def client_endpoints(config: Config) -> db.Dashboard:
    return (
        base(
            config,
            "exfw-clients",
            "Exchange firewall: client endpoints",
            "Client Access endpoints, health pages, TLS certificate expiry and SMTP.",
        )
        .variables(variables(config))
        .with_panel(
            paths_table(
                config,
                "Client endpoints not open (now)",
                "Client endpoints whose last probe was not open, from the client zones' agents: how, "
                "since when and where. Restricting client traffic is allowed: check whether it was meant.",
                f'exchange_path_up{{{PATH}, kind="client-exchange"}} == 0',
                height=8,
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Client endpoints open")
            .span(12)
            .height(9)
            .description("Open client paths per target and service, summed over the client zones' agents.")
            .with_target(
                query(
                    f'sum by (target, service) (exchange_path_up{{{PATH}, kind="client-exchange"}})',
                    "{{target}} {{service}}",
                )
            )
            .min(0)
        )
        .with_panel(
            timeseries.Panel()
            .title("Health pages (healthcheck.htm)")
            .span(12)
            .height(9)
            .description(
                "Managed Availability health pages: 1 when the page answers 200 with the server's name, 0 "
                "in maintenance mode, with the component inactive, or behind a proxy."
            )
            .with_target(
                query(f'exchange_protocol_up{{{PATH}, check=~"https-health:.*"}}', "{{target}} {{check}}")
            )
            .min(0)
            .max(1)
        )
        .with_panel(
            table.Panel()
            .title("TLS certificates: days left")
            .span(12)
            .height(9)
            .description(
                "Days until each certificate presented on a probed port expires: under 21 warns, 7 pages."
            )
            .with_target(
                query(f"(exchange_tls_cert_expiry_timestamp_seconds{{{SEL}}} - time()) / 86400", instant=True)
            )
            .with_transformation(transformation("merge"))
            .with_transformation(
                organize(["target", "port", "service", "Value"], {"Value": "days left"}, ["job", "instance"])
            )
            .thresholds(thresholds((None, "red"), (7, "orange"), (21, "green")))
            .override_by_name(
                "days left", [prop("custom.cellOptions", {"type": "color-text"}), prop("decimals", 1)]
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("SMTP (banner, EHLO, STARTTLS)")
            .span(12)
            .height(9)
            .description("1 when the SMTP service answered its banner, EHLO and STARTTLS as expected.")
            .with_target(query(f'exchange_protocol_up{{{PATH}, check="smtp"}}', "{{target}}:{{port}}"))
            .min(0)
            .max(1)
        )
    )


def prober_health(config: Config) -> db.Dashboard:
    return (
        base(
            config,
            "exfw-prober",
            "Exchange firewall: prober health",
            "Is every agent probing on time, and is its inventory fresh?",
        )
        .variables(variables(config))
        .with_panel(
            stat.Panel()
            .title("Agents up")
            .description("Agents Prometheus scrapes successfully.")
            .span(6)
            .height(5)
            .with_target(query(f"sum(up{{{SEL}}})"))
        )
        .with_panel(
            stat.Panel()
            .title("Agents down")
            .description("Agents Prometheus cannot scrape: whatever they would see is invisible.")
            .span(6)
            .height(5)
            .with_target(query(f"count(up{{{SEL}}} == 0) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Inventories stale")
            .description(
                "Agents whose inventory is older than three refresh intervals (AD discovery failing)."
            )
            .span(6)
            .height(5)
            .with_target(query(f"sum(exchange_inventory_stale{{{SEL}}}) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Baseline stores failing")
            .description(
                "Agents that cannot write their baseline file: they keep probing in memory, and forget "
                "what used to work on a restart."
            )
            .span(6)
            .height(5)
            .with_target(query(f"count(exchange_state_store_healthy{{{SEL}}} == 0) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Probe lag (largest over 10 s)")
            .description("How late probes start behind their schedule; above 10 s for 5 minutes warns.")
            .span(12)
            .height(8)
            .unit("s")
            .with_target(query(f"exchange_probe_lag_seconds{{{SEL}}}", "{{instance}}"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Probes per second by result")
            .description("Completed probes by outcome over all selected agents.")
            .span(12)
            .height(8)
            .unit("ops")
            .with_target(
                query(
                    f"sum by (result) (rate(exchange_probes_total{{{SEL}}}[$__rate_interval]))",
                    "{{result}}",
                )
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("In flight / limit")
            .description("Probes in flight against the concurrency cap: at the cap, every slot is busy.")
            .span(12)
            .height(8)
            .with_target(query(f"exchange_probes_in_flight{{{SEL}}}", "{{instance}} in flight", ref="A"))
            .with_target(query(f"exchange_probe_concurrency_limit{{{SEL}}}", "{{instance}} limit", ref="B"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Discovery: seconds since last success")
            .description("Age of the last successful AD read per agent, and discovery errors by reason.")
            .span(12)
            .height(8)
            .unit("s")
            .with_target(
                query(f"time() - exchange_discovery_last_success_timestamp_seconds{{{SEL}}}", "{{instance}}")
            )
            .with_target(
                query(
                    f"sum by (reason) (increase(exchange_discovery_errors_total{{{SEL}}}[$__rate_interval]))",
                    "errors: {{reason}}",
                    ref="B",
                )
            )
        )
    )


DASHBOARDS: dict[str, Callable[[Config], db.Dashboard]] = {
    "incident.json": incident,
    "overview.json": overview,
    "server-detail.json": server_detail,
    "client-endpoints.json": client_endpoints,
    "prober-health.json": prober_health,
}
RULES_NAME = Path(rules.RULES_FILE).name


def render(build: Callable[[Config], db.Dashboard], config: Config | None = None) -> str:
    data = json.loads(json.dumps(build(config or Config()).build(), cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number  # Grafana wants unique panel ids; the SDK leaves them to us
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def outputs(config: Config, out: Path | None) -> dict[Path, str]:
    """Every generated file's path and text: in the repository, or all side by side in `out`."""
    files = {(out or HERE) / name: render(build, config) for name, build in DASHBOARDS.items()}
    files[out / RULES_NAME if out else REPO / rules.RULES_FILE] = rules.render(config)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    parser.add_argument(
        "--job-selector",
        default=defaults.job_selector,
        help=f"PromQL label matchers that select the exporters (default: {defaults.job_selector})",
    )
    parser.add_argument(
        "--matrix-url",
        default=defaults.matrix_url,
        help=f"base URL of any agent, for links to its /matrix page (default: {defaults.matrix_url})",
    )
    parser.add_argument(
        "--runbook-url",
        default=defaults.runbook_url,
        help="base URL of docs/runbooks.md as your people read it; alerts link <base>#<alertname lowercased>",
    )
    parser.add_argument("--out", type=Path, help="write the dashboards and the rule file into this directory")
    args = parser.parse_args(argv)
    try:
        config = Config(args.job_selector, args.matrix_url, args.runbook_url)
    except ValueError as error:
        parser.error(str(error))
    customised = [f.name for f in fields(Config) if getattr(config, f.name) != getattr(defaults, f.name)]
    if args.check and (customised or args.out):
        parser.error(
            "--check compares the committed files, which hold the defaults: it takes no other option"
        )
    if customised and args.out is None:
        parser.error(
            f"{', '.join(customised)} changed: write the customised copy with --out DIR "
            "(the committed files keep the defaults)"
        )
    if args.check:
        stale = [
            str(file.relative_to(REPO))
            for file, text in outputs(defaults, None).items()
            if not file.exists() or file.read_text() != text
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}; run `python -m dashboards.build`", file=sys.stderr)
            return 1
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for file, text in outputs(config, args.out).items():
        file.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
