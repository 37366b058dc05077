"""The /metrics exposition: one custom collector for the exporter's own metrics, plus the per-path families.

The collector yields a consistent snapshot at scrape time (no stale label sets). The per-path families
come pre-rendered from the PathExposition (see exposition.py for why); both are text format 0.0.4.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.outputs.exposition import LABELS, PathExposition, label_values
from exporter.outputs.view import AgentView, InventoryHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ExporterCollector(Collector):
    """Prober health, inventory and build info, read from the agent at scrape time."""

    def __init__(self, agent: AgentView) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        agent = self.agent
        stats = agent.stats
        probes = CounterMetricFamily(
            "exchange_probes", "Probes completed since start, by result state.", labels=["result"]
        )
        for result, count in sorted(stats.probes.items()):
            probes.add_metric([result], count)
        yield probes
        yield GaugeMetricFamily(
            "exchange_probe_lag_seconds",
            "Largest delay of a probe's start behind its schedule over the last 10 s.",
            value=stats.lag_max_recent,
        )
        yield GaugeMetricFamily("exchange_probes_in_flight", "Probes running now.", value=stats.in_flight)
        yield GaugeMetricFamily(
            "exchange_probe_concurrency_limit",
            "Most probes allowed in flight (derived from the fd limit unless set).",
            value=agent.concurrency_limit,
        )
        yield GaugeMetricFamily(
            "exchange_probe_interval_seconds",
            "Configured interval between probes of one path.",
            value=agent.interval,
        )
        yield CounterMetricFamily(
            "exchange_probe_cycles", "Complete passes over the plan.", value=stats.cycles
        )
        paths = GaugeMetricFamily("exchange_paths", "Paths this agent probes, by path kind.", labels=["kind"])
        for kind, count in sorted(agent.table.kinds.items()):
            paths.add_metric([kind], count)
        yield paths
        members = GaugeMetricFamily(
            "exchange_inventory_members", "Inventory members by kind and AD site.", labels=["kind", "site"]
        )
        counts: Counter[tuple[str, str]] = Counter()
        for server in agent.inventory.servers:
            counts["edge" if server.is_edge else "exchange", server.site] += 1
        for dc in agent.inventory.domain_controllers:
            counts["domain_controller", dc.site] += 1
        for (kind, site), count in sorted(counts.items()):
            members.add_metric([kind, site], count)
        yield members
        info = GaugeMetricFamily(
            "exchange_build_info",
            "Build information; always 1.",
            labels=["version", "python_version", "source", "organisation"],
        )
        info.add_metric(
            [__version__, platform.python_version(), agent.source, agent.inventory.organisation], 1
        )
        yield info
        yield GaugeMetricFamily(
            "exchange_exporter_ready",
            "1 once every planned path has been probed at least once.",
            value=1 if agent.ready else 0,
        )
        state = agent.state
        if state is None:
            return
        changes = CounterMetricFamily(
            "exchange_path_changes",
            "Hysteresis transitions of paths (pending/open -> blocked, blocked -> open).",
            labels=["from", "to"],
        )
        for (old, new), count in sorted(state.transition_counts().items()):
            changes.add_metric([old.value, new.value], count)
        yield changes
        compliant = GaugeMetricFamily(
            "exchange_supportability_compliant",
            "1 when no required Exchange-Exchange or Exchange-DC path from the source is blocked by the "
            "network (a port nobody listens on is no violation), 0 when one is; absent while undetermined "
            "(paths pending or only local errors) and for observers (the rule judges only Exchange "
            "servers' and DCs' own paths).",
            labels=["source"],
        )
        offending = GaugeMetricFamily(
            "exchange_supportability_blocked_paths", "Required paths blocked, by source.", labels=["source"]
        )
        undetermined = GaugeMetricFamily(
            "exchange_supportability_undetermined_paths",
            "Required paths not yet judged (pending, or only our own errors lately), by source.",
            labels=["source"],
        )
        silent = GaugeMetricFamily(
            "exchange_supportability_not_listening_paths",
            "Required paths whose host refused and that never worked (nothing listens: no violation), by "
            "source.",
            labels=["source"],
        )
        for source, verdict in sorted(state.verdicts().items()):
            if not verdict.applicable:
                continue  # an observer: reported path by path, never judged
            if verdict.compliant is not None:
                compliant.add_metric([source], 1 if verdict.compliant else 0)
            offending.add_metric([source], verdict.blocked)
            undetermined.add_metric([source], verdict.unknown)
            silent.add_metric([source], verdict.not_listening)
        yield compliant
        yield offending
        yield undetermined
        yield silent
        yield GaugeMetricFamily(
            "exchange_state_store_healthy",
            "1 when the baseline file is being written; 0 when writes fail (probing goes on in memory).",
            value=1 if state.store_healthy else 0,
        )


class InventoryCollector(Collector):
    """How the inventory source has been read: AD discovery's health, or the inventory file's reloads."""

    def __init__(self, health: InventoryHealth) -> None:
        self.health = health

    def collect(self) -> Iterable[Metric]:
        health = self.health
        if health.kind == "file":
            reloads = CounterMetricFamily(
                "exchange_inventory_reloads",
                "Reloads of the inventory file after it changed, by result.",
                labels=["result"],
            )
            for result, count in sorted(health.reloads.items()):
                reloads.add_metric([result], count)
            yield reloads
            yield GaugeMetricFamily(
                "exchange_inventory_file_valid",
                "0 when the inventory file changed and no longer validates (the last good plan runs on).",
                value=0 if health.last_error else 1,
            )
            return
        if health.kind != "ldap":
            return
        yield GaugeMetricFamily(
            "exchange_discovery_last_success_timestamp_seconds",
            "Unix time of the last successful read of Active Directory (0: never).",
            value=health.last_success_timestamp or 0,
        )
        errors = CounterMetricFamily(
            "exchange_discovery_errors",
            "Failed discoveries by reason (config, dns, connect, tls, bind, search, internal).",
            labels=["reason"],
        )
        for reason, count in sorted(health.errors_total.items()):
            errors.add_metric([reason], count)
        yield errors
        yield GaugeMetricFamily(
            "exchange_inventory_stale",
            "1 when the inventory is older than three refresh intervals (or discovery never succeeded).",
            value=1 if health.stale() else 0,
        )
        yield GaugeMetricFamily(
            "exchange_discovery_interval_seconds",
            "Configured discovery refresh interval.",
            value=health.interval,
        )


class LocationCollector(Collector):
    """exchange_path_block_location_info: one series per located blocked path (gone when it reopens)."""

    def __init__(self, agent: AgentView) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "exchange_path_block_location_info",
            "Where a blocked path is blocked, by TTL-limited connects: the hop and device that answered "
            "last (dropped), rejected it (ICMP) or reset it (a device short of the target); always 1.",
            labels=[*LABELS, "family", "hop", "device", "device_name", "verdict"],
        )
        locations = self.agent.locations
        if locations:
            for path in self.agent.table.paths:
                where = locations.get(path.key)
                if where is None:
                    continue
                values = (
                    *label_values(path),
                    path.family,
                    str(where.hop) if where.hop is not None else "",
                    where.device or "",
                    where.device_name or "",
                    where.verdict,
                )
                info.add_metric(list(values), 1)
        yield info


def build_registry(agent: AgentView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(agent))
    registry.register(LocationCollector(agent))
    if agent.inventory_health is not None:
        registry.register(InventoryCollector(agent.inventory_health))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(paths: PathExposition, registry: CollectorRegistry) -> bytes:
    """The whole exposition in one piece (tests, tools). Call off the probing loop."""
    return b"".join(render_blocks(paths, registry))


def render_blocks(paths: PathExposition, registry: CollectorRegistry) -> Iterator[bytes]:
    """The whole exposition as a stream of short pieces: the registry's families, then the per-path
    families block by block (see PathExposition.render_blocks)."""
    yield generate_latest(registry)
    yield from paths.render_blocks()


def respond_gzip(paths: PathExposition, registry: CollectorRegistry) -> tuple[bytes, dict[str, str]]:
    """The exposition gzip-compressed, as Prometheus asks for it: the compressed blocks of the per-path
    families that did not change since the last scrape are reused."""
    body = paths.render_gzip(generate_latest(registry))
    return body, {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}


def wants_gzip(accept_encoding: str) -> bool:
    return "gzip" in accept_encoding.lower()
