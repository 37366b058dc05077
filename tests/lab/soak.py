"""A soak run: many targets behind the routed lab, random scripted firewall changes, a running service.

Used by tests/test_soak.py (3 minutes in CI) and bench/soak.py (an hour or more). Judges the service by
its own change log: every injected block must be detected as open -> blocked on exactly that path, and no
other path may ever be reported blocked (a false page).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.lab.netns import RoutedLab, run

REPO = Path(__file__).resolve().parents[2]
PORTS = (25, 80, 135, 443, 445, 2525)  # a subset: the soak is about many targets and changes


@dataclass
class Change:
    target: str
    port: int
    action: str  # "drop" | "reject"
    start: float  # wall time the rule went in
    end: float | None = None  # wall time it came out


@dataclass
class SoakReport:
    targets: int
    paths: int
    seconds: float
    changes: list[Change] = field(default_factory=list)
    detected: int = 0
    missed: list[str] = field(default_factory=list)
    false_pages: list[str] = field(default_factory=list)
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    lag_max: float = 0.0
    probes: float = 0.0
    rss_series: list[tuple[int, int]] = field(default_factory=list)  # (seconds into the run, KiB) each minute

    def summary(self) -> str:
        text = (
            f"soak: {self.targets} targets, {self.paths} paths, {self.seconds:.0f} s, "
            f"{len(self.changes)} firewall changes, {self.detected} detected, {len(self.missed)} missed, "
            f"{len(self.false_pages)} false pages, RSS {self.rss_start_kib / 1024:.1f} -> "
            f"{self.rss_end_kib / 1024:.1f} MiB, max lag {self.lag_max:.2f} s, {self.probes:.0f} probes"
        )
        every_ten = [f"{t // 60}m {kib / 1024:.1f}" for t, kib in self.rss_series if (t // 60) % 10 == 0]
        return text + (f"\nRSS (MiB) every 10 minutes: {', '.join(every_ten)}" if len(every_ten) > 1 else "")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def soak(
    lab: RoutedLab, workdir: Path, *, targets: int, seconds: float, interval: float, seed: int = 1
) -> SoakReport:
    rng = random.Random(seed)
    addresses = [f"{lab.dst_subnet4}{10 + i}" for i in range(targets)]
    for address in addresses:
        run("ip", "-n", lab.dst, "addr", "add", f"{address}/24", "dev", "eth0", check=False)
    lab.listen(*PORTS)
    servers = [
        {
            "name": f"S{i:03d}",
            "fqdn": f"s{i:03d}.soak.test",
            "address": a,
            "roles": ["mailbox"],
            "version": "2019",
            "site": f"Site-{i % 5}",
        }
        for i, a in enumerate(addresses)
    ]
    inventory = workdir / "soak.yaml"
    inventory.write_text(yaml.safe_dump({"organisation": "Soak", "servers": servers}))
    port = 10_000 + os.getpid() % 20_000
    log = (workdir / "soak-service.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--inventory",
            str(inventory),
            "--source",
            "monitor.soak.test",
            "--connect-only",
            "--interval",
            str(interval),
            "--timeout",
            "0.5",
            "--confirm-delay",
            "0.5",
            "--state-file",
            str(workdir / "soak.sqlite"),
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "service died"
            try:
                if client.get(base + "/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.5)
        paths = [p for p in client.get(base + "/api/v1/paths").json() if p["port"] in PORTS]
        # only paths the listeners answer are candidates (the catalogue has more ports than we listen on)
        candidates = [(p["target"], p["port"]) for p in paths if p["state"] == "open"]
        by_target = {s["fqdn"]: s["address"] for s in servers}
        report = SoakReport(targets, len(paths), seconds)
        report.rss_start_kib = rss_kib(proc.pid)
        started = time.monotonic()
        active: list[tuple[Change, int]] = []
        next_change = started + 2.0
        hold = max(4 * interval, 12.0)  # long enough to be confirmed, whatever the phase
        next_sample = started
        while time.monotonic() - started < seconds or active:
            now = time.monotonic()
            adding = now - started < seconds
            for change, handle in list(active):
                if time.time() - change.start >= hold:
                    lab.nft(f"delete rule inet fw forward handle {handle}")
                    change.end = time.time()
                    active.remove((change, handle))
            if adding and now >= next_change and len(active) < 5:
                target, tport = rng.choice(candidates)
                if all(c.target != target or c.port != tport for c, _h in active):
                    action = rng.choice(
                        ["drop", "reject with tcp reset", "reject with icmpx admin-prohibited"]
                    )
                    rule = f"ip daddr {by_target[target]} tcp dport {tport} {action}"
                    out = run(
                        "ip",
                        "netns",
                        "exec",
                        lab.rtr,
                        "nft",
                        "--echo",
                        "--handle",
                        "add",
                        "rule",
                        "inet",
                        "fw",
                        "forward",
                        *rule.split(),
                    ).stdout
                    handle = int(out.rsplit("# handle", 1)[1].split()[0])
                    change = Change(target, tport, action.split()[0], time.time())
                    report.changes.append(change)
                    active.append((change, handle))
                next_change = now + rng.uniform(3.0, 8.0)
            text = client.get(base + "/metrics").text
            report.lag_max = max(report.lag_max, metric(text, "exchange_probe_lag_seconds"))
            if now >= next_sample:
                report.rss_series.append((round(now - started), rss_kib(proc.pid)))
                next_sample += 60.0
            time.sleep(1.0)
        time.sleep(hold)  # every change was held `hold` seconds; let the last recoveries come in
        text = client.get(base + "/metrics").text
        report.probes = metric(text, "exchange_probes_total")
        report.rss_end_kib = rss_kib(proc.pid)
        judge(report, client.get(base + "/api/v1/changes", params={"limit": 10000}).json())
        return report
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
        log.close()
        lab.flush()
        for address in addresses:
            run("ip", "-n", lab.dst, "addr", "del", f"{address}/24", "dev", "eth0", check=False)


def judge(report: SoakReport, changes: list[dict[str, Any]]) -> None:
    """A page is a path reported *newly* blocked. Ports the lab's listeners never served read "never open"
    from the start: a misconfiguration report, not a page, and not a change of ours."""
    blocks = [c for c in changes if c["to_status"] == "blocked" and c["classification"] == "newly_blocked"]
    injected = {(c.target, c.port) for c in report.changes}
    for block in blocks:
        _source, target, port, _proto, _check = block["path"].split("|")
        if (target, int(port)) not in injected:
            report.false_pages.append(f"{target}:{port} {block['classification']} at {block['time']}")
    for change in report.changes:
        seen = [b for b in blocks if b["path"].split("|")[1:3] == [change.target, str(change.port)]]
        if seen:
            report.detected += 1
        else:
            report.missed.append(f"{change.target}:{change.port} {change.action}")
