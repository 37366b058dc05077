"""Grafana dashboards as code (grafana-foundation-sdk), written to dashboards/*.json.

    python -m dashboards.build            # regenerate the committed JSON
    python -m dashboards.build --check    # exit 1 if the committed JSON is out of date (the tests do this)

The datasource is a variable, and site, role and source are template variables, so the same files work
in any Grafana. Queries use the metric names documented in the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
PATH = 'source=~"$source", source_site=~"$source_site", target_site=~"$target_site", target_role=~"$role"'
TAGS = ["exchange", "firewall", "exchange-firewall-exporter"]


def query(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(PromQueryFormat.TABLE)
    return q


def variables(*extra: db.QueryVariable) -> list[Any]:
    def label_var(
        name: str, label: str, metric_label: str, metric: str = "exchange_path_up"
    ) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(f"label_values({metric}, {metric_label})")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_var("source_site", "Source site", "source_site"),
        label_var("target_site", "Target site", "target_site"),
        label_var("role", "Target role", "target_role"),
        label_var("source", "Source (agent)", "source"),
        *extra,
    ]


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
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


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def overview() -> db.Dashboard:
    return (
        base(
            "exfw-overview",
            "Exchange firewall: overview",
            "Microsoft's supportability verdict, blocked and newly blocked paths, and the site-by-site "
            "picture.",
        )
        .variables(variables())
        .with_row(db.Row("Verdict"))
        .with_panel(
            stat.Panel()
            .title("Supportability (worst source)")
            .span(6)
            .height(5)
            .description("Compliant only when every required Exchange-Exchange and Exchange-DC path is open.")
            .with_target(query('min(exchange_supportability_compliant{source=~"$source"})'))
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
            .with_target(query(f"sum(exchange_path_blocked{{{PATH}}}) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "orange")))
        )
        .with_panel(
            stat.Panel()
            .title("Paths probed")
            .span(6)
            .height(5)
            .with_target(query(f"count(exchange_path_up{{{PATH}}})"))
        )
        .with_row(db.Row("Site by site"))
        .with_panel(
            table.Panel()
            .title("Site pairs: blocked of all paths")
            .span(12)
            .height(9)
            .description("One row per source site, target site and path kind.")
            .with_target(
                query(
                    "sum by (source_site, target_site, kind) (exchange:paths_blocked:sum_by_site_pair"
                    '{source_site=~"$source_site", target_site=~"$target_site"})',
                    instant=True,
                    ref="A",
                )
            )
            .with_target(
                query(
                    "sum by (source_site, target_site, kind) (exchange:paths:count_by_site_pair"
                    '{source_site=~"$source_site", target_site=~"$target_site"})',
                    instant=True,
                    ref="B",
                )
            )
            .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        )
        .with_panel(
            timeseries.Panel()
            .title("Blocked paths by site pair")
            .span(12)
            .height(9)
            .with_target(
                query(
                    "sum by (source_site, target_site) (exchange:paths_blocked:sum_by_site_pair"
                    '{source_site=~"$source_site", target_site=~"$target_site"})',
                    "{{source_site}} -> {{target_site}}",
                )
            )
            .min(0)
        )
        .with_row(db.Row("Blocked now"))
        .with_panel(
            table.Panel()
            .title("Blocked paths, with how they fail")
            .span(24)
            .height(10)
            .with_target(
                query(
                    f"exchange_path_state{{{PATH}}} == 1 and on (instance, source, target, port, proto) "
                    f"exchange_path_blocked == 1",
                    instant=True,
                )
            )
        )
    )


def server_detail() -> db.Dashboard:
    target = (
        db.QueryVariable("server")
        .label("Server")
        .datasource(DS)
        .query("label_values(exchange_path_up, target)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    return (
        base(
            "exfw-server",
            "Exchange firewall: server detail",
            "Every port to and from one server, by source, over time.",
        )
        .variables(variables(target))
        .with_row(db.Row("To this server"))
        .with_panel(
            table.Panel()
            .title("Ports of $server, by source (now)")
            .span(24)
            .height(10)
            .with_target(
                query('exchange_path_state{target=~"$server", source=~"$source"} == 1', instant=True)
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("Open (1) / not (0) per source and port")
            .span(12)
            .height(9)
            .with_target(
                query(
                    'exchange_path_up{target=~"$server", source=~"$source"}',
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
            .with_target(
                query(
                    'exchange_path_connect_seconds{target=~"$server", source=~"$source"}',
                    "{{source}} -> {{port}}/{{proto}}",
                )
            )
        )
        .with_row(db.Row("From this server (its own agent)"))
        .with_panel(
            table.Panel()
            .title("Paths probed by $server's agent (now)")
            .span(24)
            .height(10)
            .with_target(query('exchange_path_state{source=~"$server"} == 1', instant=True))
        )
        .with_panel(
            timeseries.Panel()
            .title("Blocked paths from $server")
            .span(24)
            .height(8)
            .with_target(query('sum by (target) (exchange_path_blocked{source=~"$server"})', "{{target}}"))
            .min(0)
        )
    )


def client_endpoints() -> db.Dashboard:
    return (
        base(
            "exfw-clients",
            "Exchange firewall: client endpoints",
            "Client Access endpoints, health pages, TLS certificate expiry and SMTP.",
        )
        .variables(variables())
        .with_panel(
            table.Panel()
            .title("Client endpoints not open (now)")
            .span(24)
            .height(8)
            .with_target(query(f'exchange_path_up{{{PATH}, kind="client-exchange"}} == 0', instant=True))
        )
        .with_panel(
            timeseries.Panel()
            .title("Client endpoints open")
            .span(12)
            .height(9)
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
            .with_target(query("(exchange_tls_cert_expiry_timestamp_seconds - time()) / 86400", instant=True))
            .thresholds(thresholds((None, "red"), (7, "orange"), (21, "green")))
        )
        .with_panel(
            timeseries.Panel()
            .title("SMTP (banner, EHLO, STARTTLS)")
            .span(12)
            .height(9)
            .with_target(query(f'exchange_protocol_up{{{PATH}, check="smtp"}}', "{{target}}:{{port}}"))
            .min(0)
            .max(1)
        )
    )


def prober_health() -> db.Dashboard:
    job = 'job=~"exchange-firewall-exporter.*"'
    return (
        base(
            "exfw-prober",
            "Exchange firewall: prober health",
            "Is every agent probing on time, and is its inventory fresh?",
        )
        .variables(variables())
        .with_panel(stat.Panel().title("Agents up").span(6).height(5).with_target(query(f"sum(up{{{job}}})")))
        .with_panel(
            stat.Panel()
            .title("Agents down")
            .span(6)
            .height(5)
            .with_target(query(f"count(up{{{job}}} == 0) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Inventories stale")
            .span(6)
            .height(5)
            .with_target(query("sum(exchange_inventory_stale) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Baseline stores failing")
            .span(6)
            .height(5)
            .with_target(query("count(exchange_state_store_healthy == 0) or vector(0)"))
            .thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Probe lag (largest over 10 s)")
            .span(12)
            .height(8)
            .unit("s")
            .with_target(query("exchange_probe_lag_seconds", "{{instance}}"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Probes per second by result")
            .span(12)
            .height(8)
            .unit("ops")
            .with_target(
                query("sum by (result) (rate(exchange_probes_total[$__rate_interval]))", "{{result}}")
            )
        )
        .with_panel(
            timeseries.Panel()
            .title("In flight / limit")
            .span(12)
            .height(8)
            .with_target(query("exchange_probes_in_flight", "{{instance}} in flight", ref="A"))
            .with_target(query("exchange_probe_concurrency_limit", "{{instance}} limit", ref="B"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Discovery: seconds since last success")
            .span(12)
            .height(8)
            .unit("s")
            .with_target(query("time() - exchange_discovery_last_success_timestamp_seconds", "{{instance}}"))
            .with_target(
                query(
                    "sum by (reason) (increase(exchange_discovery_errors_total[$__rate_interval]))",
                    "errors: {{reason}}",
                    ref="B",
                )
            )
        )
    )


DASHBOARDS = {
    "overview.json": overview,
    "server-detail.json": server_detail,
    "client-endpoints.json": client_endpoints,
    "prober-health.json": prober_health,
}


def render(build: Any) -> str:
    data = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number  # Grafana wants unique panel ids; the SDK leaves them to us
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        text = render(build)
        file = HERE / name
        if args.check:
            if not file.exists() or file.read_text() != text:
                stale.append(name)
        else:
            file.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python -m dashboards.build`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
