"""The composition root: settings in, a running agent out. The only module that knows every stage.

It reads the inventory source the settings chose, plans, and wires the pipeline: prober -> recorder
(tracker, results, exposition) -> the outputs' read-only view. Components start in order, stop in reverse.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from exporter import demo
from exporter.engine.host import machine_fqdn
from exporter.engine.locator import Locator
from exporter.engine.prober import Prober
from exporter.engine.resolver import families_of
from exporter.engine.scheduler import EngineStats
from exporter.inventory.model import Inventory
from exporter.inventory.sources import InventoryWatcher
from exporter.outputs.exposition import PathExposition
from exporter.outputs.view import InventoryHealth, StateView
from exporter.plan.planner import NetworkPath, plan, shard
from exporter.probes import registry
from exporter.probes.locate import Location
from exporter.settings import PlanSettings, Settings
from exporter.state.baseline import Baseline
from exporter.state.recorder import Recorder, Upkeep
from exporter.state.results import ResultTable
from exporter.state.status import Status, Transition
from exporter.state.tracker import Tracker, Verdict

#: checks this build can run; the planner leaves out catalogue rows whose check is not here
AVAILABLE_CHECKS = frozenset({"tcp", *registry.CHECKS})

log = logging.getLogger("exporter")


class Component(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def identity(settings: Settings, inventory: Inventory) -> str:
    """This agent's --source: given, else the demo's observer, else this machine's FQDN as AD knows it.
    When that FQDN is no member's but exactly one member has this machine's short name (a DNS suffix that
    differs from AD's), that member's FQDN: the agent then probes as that Exchange server or DC."""
    if settings.plan.source:
        return settings.plan.source
    if settings.inventory.demo:
        return demo.DEMO_SOURCE
    fqdn = machine_fqdn()
    if inventory.find(fqdn) is None:
        # the host name too: a resolver may map this machine's name to "localhost"
        shorts = {name.split(".")[0].lower() for name in (fqdn, socket.gethostname())} - {"localhost"}
        named = [m for m in inventory.members() if shorts & {m.name.lower(), m.fqdn.split(".")[0].lower()}]
        if len(named) == 1:
            return named[0].fqdn
    return fqdn


def planner_for(settings: PlanSettings, source: str) -> Callable[[Inventory], list[NetworkPath]]:
    def planner(inventory: Inventory) -> list[NetworkPath]:
        # a path per address family a member's name resolves to (members given by address: per address)
        named = [m.fqdn for m in inventory.members() if not m.address]
        paths = plan(
            inventory,
            source,
            vantage=settings.vantage,
            checks=AVAILABLE_CHECKS,
            connect_only=settings.connect_only,
            optional_services=settings.optional_services,
            source_site=settings.source_site,
            families=families_of(named),
            witnesses=dict(inventory.witnesses),
        )
        return shard(paths, *settings.shard) if settings.shard else paths

    return planner


def read_inventory(settings: Settings) -> InventoryWatcher:
    """The inventory source, read once. A file that does not load stops the run (ConfigError, exit 2); a
    directory that cannot be read yet leaves the watcher without an inventory (it keeps trying)."""
    watcher = InventoryWatcher(settings.inventory.source())
    watcher.read_once(strict=watcher.kind != "ldap")
    return watcher


def inventory_and_plan(settings: Settings) -> tuple[InventoryWatcher, Inventory, str, list[NetworkPath]]:
    """What `serve` and `check` both start from: the inventory, this agent's identity and its plan."""
    watcher = read_inventory(settings)
    # no inventory yet (AD unreachable at start): probe nothing, say so, and keep trying
    inventory = watcher.inventory or Inventory("(discovery pending)", source="ldap")
    source = identity(settings, inventory)
    return watcher, inventory, source, planner_for(settings.plan, source)(inventory)


class _Closing:
    """A baseline as a component (it is closed, not stopped)."""

    def __init__(self, store: Baseline) -> None:
        self.store = store

    def start(self) -> None:
        self.store.start()

    def stop(self) -> None:
        self.store.close()


@dataclass
class _TrackedState:
    """The StateView of a tracker, with the verdicts the upkeep thread keeps fresh."""

    tracker: Tracker
    upkeep: Upkeep

    def verdicts(self, fresh: bool = False) -> dict[str, Verdict]:
        return self.tracker.verdicts() if fresh else self.upkeep.verdicts()

    def verdict(self) -> Verdict:
        return self.tracker.verdict()

    def changes(self, since: float, limit: int) -> list[Transition]:
        return self.tracker.changes(since, limit)

    def transition_counts(self) -> dict[tuple[Status, Status], int]:
        return self.tracker.transition_counts()

    @property
    def store_healthy(self) -> bool:
        return self.tracker.store.healthy


@dataclass
class Agent:
    """One running agent: its components, and the read-only view the outputs get (AgentView)."""

    settings: Settings
    prober: Prober
    recorder: Recorder
    exposition: PathExposition
    watcher: InventoryWatcher
    planner: Callable[[Inventory, str], list[NetworkPath]]
    state: StateView | None = None
    components: list[Component] = field(default_factory=list)

    # ---- AgentView ---------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.prober.source

    @property
    def inventory(self) -> Inventory:
        return self.prober.inventory

    @property
    def interval(self) -> float:
        return self.prober.settings.interval

    @property
    def table(self) -> ResultTable:
        return self.recorder.table

    @property
    def stats(self) -> EngineStats:
        return self.prober.stats

    @property
    def concurrency_limit(self) -> int:
        return self.prober.concurrency_limit

    @property
    def ready(self) -> bool:
        return self.recorder.ready

    @property
    def locations(self) -> Mapping[tuple[str | int, ...], Location]:
        locator = self.recorder.locator
        return locator.locations if locator is not None else {}

    @property
    def inventory_health(self) -> InventoryHealth | None:
        watching = self.watcher.kind == "ldap" or (self.watcher.kind == "file" and self.watcher.interval > 0)
        return self.watcher if watching else None

    # ---- life ----------------------------------------------------------------------------------------
    def start(self) -> None:
        for component in self.components:
            component.start()

    def stop(self) -> None:
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)


def build_agent(settings: Settings) -> Agent:
    """Wire one agent from its settings (nothing runs until `start()`). In the demo this agent also owns
    the demo's listeners: for its own plan and for those of the agents `build_demo_agents` adds."""
    watcher, inventory, source, paths = inventory_and_plan(settings)
    components: list[Component] = []
    if settings.inventory.demo:
        # every endpoint of every demo agent's plan listens (but the one closed on purpose)
        everyone = list(paths)
        for fqdn, address in demo.mesh_members():
            member = _member_settings(settings, fqdn, address)
            everyone += planner_for(member.plan, fqdn)(inventory)
        listeners = demo.DemoListeners(everyone, break_after=settings.demo_break_after)
        components.append(listeners)
        log.info(
            "demo organisation: %d listeners on 127.0.10.0/24, %s:%d left closed on purpose",
            len(listeners.endpoints),
            *demo.CLOSED,
        )
    return _wire(settings, watcher, inventory, source, paths, components)


def _member_settings(settings: Settings, fqdn: str, address: str) -> Settings:
    """The settings of the demo agent that stands for the Exchange server `fqdn`: probing as that server,
    from its own address, the rest as the observer's, with a baseline of its own in memory."""
    assert settings.state is not None
    return replace(
        settings,
        plan=replace(settings.plan, source=fqdn, vantage=None, shard=None, source_site=None),
        probe=replace(settings.probe, source_address=address),
        state=replace(settings.state, state_file=None),
    )


def build_demo_agents(settings: Settings) -> list[Agent]:
    """The demo's mesh: one more agent per demo Exchange server in this process (started and stopped with
    the observer's), each probing every path that server needs from that server's loopback address. The
    outputs show their rows and changes beside the observer's (`local_agents`); none when not the demo."""
    if not settings.inventory.demo:
        return []
    agents = []
    for fqdn, address in demo.mesh_members():
        member = _member_settings(settings, fqdn, address)
        watcher, inventory, source, paths = inventory_and_plan(member)
        agents.append(_wire(member, watcher, inventory, source, paths, []))
    return agents


def _wire(
    settings: Settings,
    watcher: InventoryWatcher,
    inventory: Inventory,
    source: str,
    paths: list[NetworkPath],
    components: list[Component],
) -> Agent:
    """The pipeline of one agent: baseline, tracker, locator, recorder, prober, upkeep, the watcher."""
    assert settings.state is not None, "serve and demo have state settings"
    store = Baseline(settings.state.state_file)
    components.append(_Closing(store))
    tracker = Tracker(
        store,
        k=settings.state.block_after,
        recover=settings.state.recover_after,
        retention=settings.state.retention_seconds,
    )
    log.info("baseline: %s", settings.state.state_file or "in memory")
    exposition = PathExposition()
    locator = Locator(
        every=settings.locate_every if settings.locate_max_hops else 0.0,
        max_hops=max(1, settings.locate_max_hops),
        timeout=min(settings.probe.timeout, 2.0),
        reverse_dns=settings.locate_reverse_dns,
        local=settings.probe.source_address,
    )
    recorder = Recorder(tracker, [exposition], locator)
    prober = Prober(
        inventory,
        paths,
        settings.probe,
        source=source,
        sink=recorder,
        checks=registry.checks(cafile=settings.probe_ca_file),
    )
    upkeep = Upkeep(tracker)
    components += [prober, upkeep]
    planner = planner_for(settings.plan, source)

    def apply(new: Inventory) -> None:
        new_paths = planner(new)
        prober.replace_plan(new, new_paths)
        log.info(
            "inventory %s: %d servers, %d DCs, %d paths",
            "refreshed" if watcher.kind == "ldap" else "reloaded",
            len(new.servers),
            len(new.domain_controllers),
            len(new_paths),
        )

    watcher.on_inventory = apply
    components.append(watcher)
    log.info(
        "source %s%s: %d paths to %d members, every %gs, up to %d in flight",
        source,
        f" (from {settings.probe.source_address})" if settings.probe.source_address else "",
        len(paths),
        sum(1 for _ in inventory.members()),
        settings.probe.interval,
        prober.concurrency_limit,
    )
    return Agent(
        settings,
        prober,
        recorder,
        exposition,
        watcher,
        lambda inv, who: planner_for(settings.plan, who)(inv),
        _TrackedState(tracker, upkeep),
        components,
    )
