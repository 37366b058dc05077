"""The whole chain with real programs: nftables change -> exporter -> Prometheus -> Alertmanager -> webhook.

Also runs every PromQL expression shipped in alerts/ and dashboards/ against that Prometheus, and checks
that a host cut off pages as one host before (instead of) its ports, and what the incident dashboard shows.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import Config
from tests.conftest import free_port
from tests.lab.monitoring import (
    RULES,
    Alertmanager,
    Notification,
    Prometheus,
    Webhook,
    alertmanager_config,
    alerts_in,
)
from tests.lab.netns import RoutedLab, run
from tests.lab.organisations import EX1_PORTS
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

DEFAULT_RUNBOOK_URL = Config().runbook_url

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
INTERVAL = 3.0
EX2 = "10.251.2.3"


def inventory(lab: RoutedLab) -> dict[str, Any]:
    server = {"roles": ["mailbox"], "version": "2019"}
    return {
        "organisation": "Lab",
        "servers": [
            {"name": "EX0", "fqdn": "ex0.lab.test", "site": "HQ", **server},  # this agent
            {"name": "EX1", "fqdn": "ex1.lab.test", "address": lab.dst4, "site": "Branch", **server},
            {"name": "EX2", "fqdn": "ex2.lab.test", "address": EX2, "site": "Branch", **server},
        ],
    }


class Stack:
    def __init__(
        self, lab: RoutedLab, svc: Service, prom: Prometheus, am: Alertmanager, hook: Webhook
    ) -> None:
        self.lab, self.svc, self.prom, self.am, self.hook = lab, svc, prom, am, hook


@pytest.fixture
def stack(routed_lab: RoutedLab, tmp_path: Path) -> Iterator[Stack]:
    lab = routed_lab
    lab.flush()
    run("ip", "-n", lab.dst, "addr", "add", f"{EX2}/24", "dev", "eth0", check=False)
    lab.listen(*EX1_PORTS)
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(inventory(lab)))
    hook = Webhook().start()
    am_port, prom_port = free_port(), free_port()
    am = Alertmanager(tmp_path, am_port, alertmanager_config(hook, group_wait="1s", group_interval="2s"))
    svc = start_service(
        serve_args(
            file,
            source="ex0.lab.test",
            interval=INTERVAL,
            timeout=0.3,
            confirm_delay=0.3,
            state_file=tmp_path / "state.sqlite",
        )
    )
    exporter = svc.base.removeprefix("http://")
    prom = Prometheus(tmp_path, prom_port, exporter, f"127.0.0.1:{am_port}", [RULES])
    try:
        yield Stack(lab, svc, prom, am, hook)
    finally:
        prom.stop()
        svc.proc.terminate()
        svc.proc.wait(10)
        am.stop()
        hook.stop()
        lab.flush()
        for listener in lab.listeners[1:]:
            listener.kill()
            listener.wait(5)
        del lab.listeners[1:]
        run("ip", "-n", lab.dst, "addr", "del", f"{EX2}/24", "dev", "eth0", check=False)


def wait_prom(prom: Prometheus, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The query's result once it has one."""
    result: list[dict[str, Any]] = wait_until(
        lambda: prom.query(expr)["data"]["result"],
        timeout,
        0.5,
        message=f"{expr} returned nothing in {timeout}s",
    )
    return list(result)


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every expression in alerts/*.rules.yml and dashboards/*.json."""
    found = []
    for file in sorted((REPO / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(file.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((f"{file.name}:{rule.get('alert') or rule.get('record')}", rule["expr"]))

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("title"), str) and "targets" in node:
                where = f"{where.split(':')[0]}:{node['title']}"
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                found.append((where, node["expr"]))
            if isinstance(node.get("query"), str) and node.get("type") == "query":
                # a template variable: label_values(metric{...}, label) is `count by (label) (metric{...})`
                match = re.fullmatch(r"label_values\((\w+(?:\{[^}]*\})?),\s*(\w+)\)", node["query"].strip())
                assert match, node["query"]
                found.append(
                    (f"{where.split(':')[0]}:${node['name']}", f"count by ({match[2]}) ({match[1]})")
                )
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for file in sorted((REPO / "dashboards").glob("*.json")):
        walk(json.loads(file.read_text()), file.name)
    return found


def instant(expr: str, **values: str) -> str:
    """A dashboard expression as Grafana would send it: its variables replaced (`values`, else `.*`)."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    # longest first: $source must not eat $source_site
    for name in sorted(
        ("source_site", "target_site", "datasource", "instance", "source", "server", "role", "job"),
        key=len,
        reverse=True,
    ):
        expr = expr.replace(f"${name}", values.get(name, ".*"))
    assert "$" not in expr.replace("$__", ""), expr
    return expr


def test_a_firewall_change_pages_once_with_evidence_and_resolves(stack: Stack) -> None:
    lab, prom, hook, am = stack.lab, stack.prom, stack.hook, stack.am
    # every path open, as Prometheus sees it
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex1.lab.test"}} == 0) == {len(EX1_PORTS)}')
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex2.lab.test"}} == 0) == {len(EX1_PORTS)}')

    # 1. one required path dropped: one page, naming who, whom, which port, how and since when
    changed = time.monotonic()
    lab.block(f"ip daddr {lab.dst4} tcp dport 2525 drop")

    def newly_blocked_2525(note: Notification) -> bool:
        return note.receiver_path == "/pager" and any(
            a["labels"]["port"] == "2525"
            for a in alerts_in(note, "ExchangeRequiredPathNewlyBlocked", "firing")
        )

    page = hook.wait_for(newly_blocked_2525)
    latency = page.received - changed
    alert = alerts_in(page, "ExchangeRequiredPathNewlyBlocked", "firing")[0]
    labels = {
        k: alert["labels"][k]
        for k in (
            "severity",
            "source",
            "source_site",
            "target",
            "target_site",
            "port",
            "proto",
            "service",
            "kind",
        )
    }
    assert labels == {
        "severity": "critical",
        "source": "ex0.lab.test",
        "source_site": "HQ",
        "target": "ex1.lab.test",
        "target_site": "Branch",
        "port": "2525",
        "proto": "tcp",
        "service": "smtp-transport",
        "kind": "exchange-exchange",
    }
    notes = alert["annotations"]
    assert notes["summary"] == "ex0.lab.test can no longer reach ex1.lab.test on 2525/tcp (smtp-transport)"
    assert "How: filtered." in notes["description"] and "Since: 20" in notes["description"]
    assert notes["runbook_url"] == f"{DEFAULT_RUNBOOK_URL}#exchangerequiredpathnewlyblocked"
    assert notes["description"].endswith(
        f"What breaks and how to confirm it: {DEFAULT_RUNBOOK_URL}#service-smtp-transport"
    )
    assert page.body["groupLabels"] == {"source_site": "HQ", "target_site": "Branch"}
    assert len(alerts_in(page, "ExchangeRequiredPathNewlyBlocked", "firing")) == 1  # only that path

    # 2. the rule is lifted: the page resolves
    lab.flush()
    hook.wait_for(
        lambda n: (
            n.receiver_path == "/pager"
            and n.received > page.received
            and bool(alerts_in(n, "ExchangeRequiredPathNewlyBlocked", "resolved"))
        )
    )
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex1.lab.test"}} == 0) == {len(EX1_PORTS)}')

    # 3. one firewall change between the two sites, three ports to both hosts: one grouped page with the
    # six paths, not six pages (every port of a host would be one host alert: the next test)
    am.reload(alertmanager_config(hook, group_wait="12s", group_interval="5m"))
    time.sleep(1)
    cut = time.monotonic()
    lab.block(f"ip daddr {lab.dst_subnet4}0/24 tcp dport {{ 25, 443, 2525 }} drop")
    grouped = hook.wait_for(
        lambda n: (
            n.received > cut
            and n.receiver_path == "/pager"
            and bool(alerts_in(n, "ExchangeRequiredPathNewlyBlocked", "firing"))
        )
    )
    time.sleep(4)  # anything else for this group would arrive now
    pages = [n for n in hook.notifications if n.received > cut and n.receiver_path == "/pager"]
    assert len(pages) == 1, [len(n.body["alerts"]) for n in pages]
    firing = alerts_in(grouped, "ExchangeRequiredPathNewlyBlocked", "firing")
    assert {(a["labels"]["target"], a["labels"]["port"]) for a in firing} == {
        (t, str(p)) for t in ("ex1.lab.test", "ex2.lab.test") for p in (25, 443, 2525)
    }
    assert grouped.body["groupLabels"] == {"source_site": "HQ", "target_site": "Branch"}

    # 4. every PromQL expression we ship parses, and the ones that should have data have some now. The
    # recording rules run on their group's own 30 s interval, at an offset Prometheus picks: wait for an
    # evaluation that saw the blocked paths (dashboards read these recorded series)
    for recorded in (
        "exchange:paths:count_by_site_pair",
        "exchange:paths_blocked:sum_by_site_pair > 0",
        "exchange:paths_newly_blocked:sum_by_site_pair > 0",
        "exchange:target_all_paths_blocked:bool",
        "exchange:probes:rate5m",
    ):
        wait_prom(prom, recorded, timeout=75)
    must_have_data = {
        "exchange-firewall.rules.yml:exchange:paths:count_by_site_pair",
        "exchange-firewall.rules.yml:exchange:paths_blocked:sum_by_site_pair",
        "exchange-firewall.rules.yml:exchange:paths_newly_blocked:sum_by_site_pair",
        "exchange-firewall.rules.yml:exchange:target_all_paths_blocked:bool",
        "exchange-firewall.rules.yml:exchange:probes:rate5m",
        "exchange-firewall.rules.yml:ExchangeRequiredPathNewlyBlocked",
        "exchange-firewall.rules.yml:ExchangeNotSupportable",
        "overview.json:Supportability (worst source)",
        "overview.json:Newly blocked required paths",
        "overview.json:Site pairs: blocked of all paths",
        "overview.json:Newly blocked (paging)",
        "overview.json:Blocked paths by site pair",
        "incident.json:Newly blocked now",
        "incident.json:Newly blocked paths over time",
        "incident.json:Newly blocked paths by site pair",
        "incident.json:First break",
        "server-detail.json:Ports of $server, by source (now)",
        "server-detail.json:Open (1) / not (0) per source and port",
        "prober-health.json:Agents up",
        "prober-health.json:Probes per second by result",
        "prober-health.json:In flight / limit",
        "overview.json:$job",
        "overview.json:$instance",
        "overview.json:$source_site",
        "overview.json:$target_site",
        "overview.json:$source",
        "server-detail.json:$server",
    }
    expressions = promql_expressions()
    assert len(expressions) >= 20
    empty = []
    for where, expr in expressions:
        reply = stack.prom.query(instant(expr))
        assert reply["status"] == "success", (where, expr, reply)
        if not reply["data"]["result"]:
            empty.append(where)
    assert not (must_have_data & set(empty)), sorted(must_have_data & set(empty))

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "alert-latency.txt").write_text(
        f"nftables drop -> webhook page: {latency:.1f} s (probe interval {INTERVAL:g} s, rule for: 0s, "
        f"scrape 1s, evaluation 1s, group_wait 1s)\n"
    )
    print(f"\nfirewall change to page: {latency:.1f} s")


def test_prometheus_restart_pages_nobody_and_a_lost_link_is_one_host_alert(stack: Stack) -> None:
    lab, prom, hook = stack.lab, stack.prom, stack.hook
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex1.lab.test"}} == 0) == {len(EX1_PORTS)}')
    # Prometheus restarts: nothing changed on the network, so nothing may page
    prom.restart()
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex1.lab.test"}} == 0) == {len(EX1_PORTS)}')
    time.sleep(5)
    pages = [n for n in hook.notifications if n.receiver_path == "/pager"]
    assert pages == [], [
        (a["labels"]["alertname"], a["labels"].get("target"), a["labels"].get("port"), a["status"])
        for n in pages
        for a in n.body["alerts"]
    ]
    # the target namespace loses its link: every path to both hosts goes. The pager must get one host
    # alert per host, and no per-port page for those hosts before it (none at all: the rules withdraw
    # them and the host alert inhibits them). The hosts' ports turn blocked within a few seconds of each
    # other (the first failure brings the host's other ports forward), seen one scrape and one
    # evaluation later: the pager's group_wait covers that, as the shipped example's 40s covers the
    # defaults (alerts/alertmanager.example.yml)
    spread = 3 + 1 + 1  # the host's spread (confirmations of filtered probes) + scrape + evaluation
    stack.am.reload(alertmanager_config(hook, group_wait=f"{spread + 3:g}s", group_interval="2s"))
    time.sleep(1)
    lab_link = ["ip", "-n", lab.dst, "link", "set", "eth0"]
    cut = time.monotonic()
    run(*lab_link, "down")
    try:
        hosts = {"ex1.lab.test", "ex2.lab.test"}

        def host_alerts_so_far() -> set[str]:
            return {
                a["labels"]["target"]
                for n in list(hook.notifications)
                if n.received > cut and n.receiver_path == "/pager"
                for a in alerts_in(n, "ExchangeTargetUnreachable", "firing")
            }

        wait_until(lambda: host_alerts_so_far() == hosts, 60, 0.2, message=lambda: str(host_alerts_so_far()))
        time.sleep(spread + 3)  # a per-port page that slipped through would follow within group_interval
        pages = [n for n in list(hook.notifications) if n.received > cut and n.receiver_path == "/pager"]
        first = alerts_in(pages[0], "ExchangeTargetUnreachable", "firing")
        assert {a["labels"]["target"] for a in first} == hosts  # the first page names both hosts
        assert all(a["labels"]["severity"] == "critical" for a in first)
        assert first[0]["annotations"]["summary"].endswith("on any port")
        per_port = [
            (
                n.received - cut,
                a["labels"]["alertname"],
                a["labels"]["target"],
                a["labels"].get("port"),
                a["status"],
            )
            for n in pages
            for a in n.body["alerts"]
            if a["labels"]["alertname"] != "ExchangeTargetUnreachable" and a["labels"].get("target") in hosts
        ]
        assert per_port == [], per_port
        rows = prom.query('ALERTS{alertname="ExchangeTargetUnreachable"}')["data"]["result"]
        assert {r["metric"]["target"] for r in rows} == hosts
        assert all(r["metric"]["alertstate"] == "firing" for r in rows)  # no `for:`: firing at once
        newly = prom.query('ALERTS{alertname="ExchangeRequiredPathNewlyBlocked"}')["data"]["result"]
        assert newly == []  # the per-port alerts of a host that is cut off are withdrawn
        # how many per-port alerts Prometheus fired (and Alertmanager held back) while the ports went one
        # by one: what group_wait and the inhibition are for
        fired = 'ALERTS{alertname="ExchangeRequiredPathNewlyBlocked", alertstate="firing"}'
        early = prom.query(f"count(max_over_time({fired}[1m]))")["data"]["result"]
        held = int(early[0]["value"][1]) if early else 0
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "host-alert-order.txt").write_text(
            f"link down -> first page: {pages[0].received - cut:.1f} s, ExchangeTargetUnreachable for both "
            f"hosts; {held} per-port alerts fired in Prometheus before their host's alert, none reached the "
            f"pager (group_wait {spread + 3:g} s)\n"
        )
        print(f"\nlink down to host page: {pages[0].received - cut:.1f} s; per-port alerts held back: {held}")
    finally:
        run(*lab_link, "up")
        # a link that went down took its routes with it: put both families' default routes back, and wait
        # until the target answers again, so the tests after this one find the lab as it was
        run("ip", "-n", lab.dst, "route", "replace", "default", "via", lab.src4.replace(".1.1", ".2.1"))
        # (IPv6 addresses go with the link too, unless keep_addr_on_down is set)
        run("ip", "-n", lab.dst, "-6", "addr", "add", f"{lab.dst6}/64", "dev", "eth0", "nodad", check=False)
        run("ip", "-n", lab.dst, "-6", "route", "replace", "default", "via", lab.dst6.replace("::2", "::1"))
        lab._wait_reachable()


def test_the_incident_dashboard_shows_a_newly_blocked_path_with_how_since_and_where(stack: Stack) -> None:
    """Every query of the incident dashboard, as Grafana sends it, against a Prometheus scraping a real
    exporter one of whose paths was just blocked by a real firewall."""
    lab, prom = stack.lab, stack.prom
    wait_prom(prom, f'count(exchange_path_blocked{{target="ex1.lab.test"}} == 0) == {len(EX1_PORTS)}')
    changed = time.time()
    lab.block(f"ip daddr {lab.dst4} tcp dport 2525 drop")
    path = 'target="ex1.lab.test", port="2525"'
    wait_prom(prom, f"exchange_path_newly_blocked{{{path}}} == 1")
    wait_prom(prom, f"exchange_path_block_location_info{{{path}}}")  # located within seconds
    wait_prom(prom, 'ALERTS{alertname="ExchangeRequiredPathNewlyBlocked", alertstate="firing"}')
    values = {"job": "exchange-firewall-exporter", "instance": stack.svc.base.removeprefix("http://")}
    dashboard = json.loads((REPO / "dashboards" / "incident.json").read_text())
    results: dict[str, list[dict[str, Any]]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            reply = prom.query(instant(target["expr"], **values))
            assert reply["status"] == "success", (panel["title"], reply)
            results[panel["title"]] = reply["data"]["result"]

    def number(title: str) -> float:
        (row,) = results[title]
        return float(row["value"][1])

    (row,) = results["Newly blocked now"]  # the one path, with how, since and where
    labels = row["metric"]
    assert {k: labels[k] for k in ("source", "target", "port", "proto", "service", "state")} == {
        "source": "ex0.lab.test",
        "target": "ex1.lab.test",
        "port": "2525",
        "proto": "tcp",
        "service": "smtp-transport",
        "state": "filtered",
    }
    assert (labels["verdict"], labels["hop"], labels["device"]) == ("dropped", "1", lab.router4)
    since = float(row["value"][1]) / 1000
    assert changed - 1 <= since <= time.time()
    assert number("Newly blocked paths") == 1
    assert number("Hosts cut off entirely") == 0
    assert number("First break") / 1000 == since
    assert number("Pages firing") >= 1
    (timeline,) = results["Newly blocked paths over time"]
    assert (timeline["metric"]["port"], timeline["value"][1]) == ("2525", "1")
    pairs = {
        (r["metric"]["source_site"], r["metric"]["target_site"]): r["value"][1]
        for r in results["Newly blocked paths by site pair"]
    }
    assert pairs == {("HQ", "Branch"): "1"}
    assert results["Path changes"]
