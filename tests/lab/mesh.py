"""Three agent hosts behind one nftables router, and this host on a fourth leg to read their APIs.

root ns 10.253.0.1 --- rtr (forwarding, nftables) --- a 10.253.1.2 / b 10.253.2.2 / c 10.253.3.2
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from tests.lab.netns import require_tools, run

REPO = Path(__file__).resolve().parents[2]
AGENTS = {"a": "10.253.1.2", "b": "10.253.2.2", "c": "10.253.3.2"}


@dataclass
class MeshLab:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    processes: list[Popen[str]] = field(default_factory=list)
    agents: dict[str, tuple[list[str], Path]] = field(default_factory=dict)  # name -> (exporter args, log)

    def ns(self, name: str) -> str:
        return f"efxm-{name}-{self.tag}"

    @property
    def host_if(self) -> str:
        return f"efxm{self.tag}"[:15]

    def up(self) -> MeshLab:
        require_tools("ip", "nft")
        self.down()
        rtr = self.ns("rtr")
        steps = [["ip", "netns", "add", rtr]]
        steps += [
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "h0", "netns", rtr],
            ["ip", "addr", "add", "10.253.0.1/24", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", rtr, "addr", "add", "10.253.0.2/24", "dev", "h0"],
            ["ip", "-n", rtr, "link", "set", "h0", "up"],
            ["ip", "-n", rtr, "link", "set", "lo", "up"],
            ["ip", "route", "add", "10.253.0.0/16", "via", "10.253.0.2"],
            ["ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
        ]
        for number, (name, address) in enumerate(AGENTS.items(), start=1):
            ns, leg = self.ns(name), f"r{name}"
            steps += [
                ["ip", "netns", "add", ns],
                ["ip", "-n", rtr, "link", "add", leg, "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["ip", "-n", rtr, "addr", "add", f"10.253.{number}.1/24", "dev", leg],
                ["ip", "-n", rtr, "link", "set", leg, "up"],
                ["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"],
                ["ip", "-n", ns, "link", "set", "eth0", "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "route", "add", "default", "via", f"10.253.{number}.1"],
            ]
        for step in steps:
            run(*step)
        self.nft("add table inet fw")
        self.nft("add chain inet fw forward { type filter hook forward priority 0; policy accept; }")
        return self

    def nft(self, command: str) -> None:
        run("ip", "netns", "exec", self.ns("rtr"), "nft", command)

    def block(self, rule: str) -> None:
        self.nft(f"add rule inet fw forward {rule}")

    def spawn(self, name: str, args: list[str], log: Path) -> Popen[str]:
        """Run `python -m ...` inside agent `name`'s namespace."""
        handle = log.open("w")
        proc: Popen[str] = Popen(
            ["ip", "netns", "exec", self.ns(name), sys.executable, *args],
            cwd=REPO,
            stdout=handle,
            stderr=handle,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.processes.append(proc)
        return proc

    def down(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
        self.processes.clear()
        run("ip", "route", "del", "10.253.0.0/16", check=False)
        run("ip", "link", "del", self.host_if, check=False)
        for name in ("rtr", *AGENTS):
            run("ip", "netns", "del", self.ns(name), check=False)
