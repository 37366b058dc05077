"""Two routers in series between the prober and a target, nftables on each and on the target (10.246).

    root ns (prober) --- r1 (hop 1) --- r2 (hop 2) --- dst (the target: hop 3)
    10.246.1.1           .1.2 | .2.1    .2.2 | .3.1    10.246.3.2
    fdf6:1::1            :1::2|:2::1    :2::2|:3::1    fdf6:3::2

Each router filters in its `forward` chain, the target in its `input` chain. Addresses live only in the
namespaces made here, and no namespace has an uplink, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from tests.lab.netns import REPO, require_tools, run, wait_reachable

NET = 246


@dataclass
class TwoRouterLab:
    net: int = NET
    tag: str = field(default_factory=lambda: f"{NET}-{os.getpid() % 100000}")
    listener: subprocess.Popen[str] | None = None

    def name(self, role: str) -> str:
        return f"efx-{role}-{self.tag}"

    def v4(self, subnet: int, host: int) -> str:
        return f"10.{self.net}.{subnet}.{host}"

    def v6(self, subnet: int, host: int) -> str:
        return f"fd{self.net:02x}:{subnet}::{host}"

    @property
    def dst4(self) -> str:
        return self.v4(3, 2)

    @property
    def dst6(self) -> str:
        return self.v6(3, 2)

    def router(self, number: int, family: str = "ipv4") -> str:
        """The address a router sends its ICMP errors to us from (its side towards the prober)."""
        return self.v4(number, 2) if family == "ipv4" else self.v6(number, 2)

    @property
    def host_if(self) -> str:
        return f"efxt{self.tag}"[:15]

    def up(self) -> TwoRouterLab:
        require_tools("ip", "nft")
        self.down()
        r1, r2, d, h = self.name("r1"), self.name("r2"), self.name("dst"), self.host_if
        steps: list[list[str]] = [
            ["ip", "netns", "add", r1],
            ["ip", "netns", "add", r2],
            ["ip", "netns", "add", d],
            ["ip", "link", "add", h, "type", "veth", "peer", "name", "up0", "netns", r1],
            ["ip", "-n", r1, "link", "add", "dn0", "type", "veth", "peer", "name", "up0", "netns", r2],
            ["ip", "-n", r2, "link", "add", "dn0", "type", "veth", "peer", "name", "eth0", "netns", d],
            ["ip", "addr", "add", f"{self.v4(1, 1)}/24", "dev", h],
            ["ip", "-6", "addr", "add", f"{self.v6(1, 1)}/64", "dev", h, "nodad"],
            ["ip", "link", "set", h, "up"],
        ]
        for number, ns in ((1, r1), (2, r2)):
            steps += [
                ["ip", "-n", ns, "addr", "add", f"{self.v4(number, 2)}/24", "dev", "up0"],
                ["ip", "-n", ns, "-6", "addr", "add", f"{self.v6(number, 2)}/64", "dev", "up0", "nodad"],
                ["ip", "-n", ns, "addr", "add", f"{self.v4(number + 1, 1)}/24", "dev", "dn0"],
                ["ip", "-n", ns, "-6", "addr", "add", f"{self.v6(number + 1, 1)}/64", "dev", "dn0", "nodad"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "link", "set", "up0", "up"],
                ["ip", "-n", ns, "link", "set", "dn0", "up"],
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"],
                ["ip", "-n", ns, "route", "add", "default", "via", self.v4(number, 1)],
                ["ip", "-n", ns, "-6", "route", "add", "default", "via", self.v6(number, 1)],
            ]
        steps += [
            # r1 reaches the target's subnet through r2 (r2's default route goes back up to r1)
            ["ip", "-n", r1, "route", "add", f"{self.v4(3, 0)}/24", "via", self.v4(2, 2)],
            ["ip", "-n", r1, "-6", "route", "add", f"{self.v6(3, 0)}/64", "via", self.v6(2, 2)],
            ["ip", "-n", d, "addr", "add", f"{self.dst4}/24", "dev", "eth0"],
            ["ip", "-n", d, "-6", "addr", "add", f"{self.dst6}/64", "dev", "eth0", "nodad"],
            ["ip", "-n", d, "link", "set", "lo", "up"],
            ["ip", "-n", d, "link", "set", "eth0", "up"],
            ["ip", "-n", d, "route", "add", "default", "via", self.v4(3, 1)],
            ["ip", "-n", d, "-6", "route", "add", "default", "via", self.v6(3, 1)],
            ["ip", "route", "add", f"10.{self.net}.0.0/16", "via", self.v4(1, 2)],
            ["ip", "-6", "route", "add", f"fd{self.net:02x}::/16", "via", self.v6(1, 2)],
        ]
        try:
            for step in steps:
                run(*step)
            for ns, hook in ((r1, "forward"), (r2, "forward"), (d, "input")):
                self._nft(ns, "add table inet fw")
                self._nft(
                    ns, f"add chain inet fw {hook} {{ type filter hook {hook} priority 0; policy accept; }}"
                )
        except subprocess.CalledProcessError as exc:
            self.down()
            raise RuntimeError(f"building the two-router lab failed at {exc.cmd}: {exc.stderr}") from exc
        self._wait_reachable()
        return self

    def _nft(self, namespace: str, command: str) -> None:
        run("ip", "netns", "exec", namespace, "nft", command)

    def block(self, where: str, rule: str) -> None:
        """A rule on "r1", "r2" (their forward chains) or "dst" (the target's input chain)."""
        chain = "input" if where == "dst" else "forward"
        self._nft(self.name(where), f"add rule inet fw {chain} {rule}")

    def flush(self) -> None:
        for where in ("r1", "r2", "dst"):
            chain = "input" if where == "dst" else "forward"
            self._nft(self.name(where), f"flush chain inet fw {chain}")

    def listen(self, *ports: int) -> None:
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.name("dst"), sys.executable, "-m", "tests.lab.listener"]
            + [str(p) for p in ports],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.listener.stdout is not None
        if self.listener.stdout.readline().strip() != "ready":
            raise RuntimeError("listener did not start in the two-router lab")

    def _wait_reachable(self, timeout: float = 15.0) -> None:
        wait_reachable((self.dst4, self.dst6), timeout)

    def down(self) -> None:
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait(5)
            self.listener = None
        run("ip", "route", "del", f"10.{self.net}.0.0/16", check=False)
        run("ip", "-6", "route", "del", f"fd{self.net:02x}::/16", check=False)
        run("ip", "link", "del", self.host_if, check=False)
        for role in ("r1", "r2", "dst"):
            run("ip", "netns", "del", self.name(role), check=False)
