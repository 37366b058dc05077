"""A private routed network for the protocol probes' firewall tests, apart from tests/lab/netns.py's lab.

    root ns (the prober) --veth-- rtr (forwarding, nftables `forward` chain) --veth-- dst (a Samba DC)
    10.252.1.1                    10.252.1.2 | 10.252.2.1                           10.252.2.2

Same recipe as RoutedLab, on its own subnets and namespace names: RoutedLab's target namespace hosts
listeners on 135/445/... for other tests, which a DC there could not share. IPv4 only. Addresses live
only in namespaces this module creates; the router has no uplink, so nothing leaves.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from tests.lab.netns import require_tools, run


@dataclass
class FencedNet:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    src4: str = "10.252.1.1"
    router4: str = "10.252.1.2"
    dst4: str = "10.252.2.2"

    @property
    def rtr(self) -> str:
        return f"efxp-rtr-{self.tag}"

    @property
    def dst(self) -> str:
        return f"efxp-dst-{self.tag}"

    @property
    def host_if(self) -> str:
        return f"efxp{self.tag}"[:15]

    def up(self) -> FencedNet:
        require_tools("ip", "nft")
        self.down()
        r, d, h = self.rtr, self.dst, self.host_if
        steps = [
            ["ip", "netns", "add", r],
            ["ip", "netns", "add", d],
            ["ip", "link", "add", h, "type", "veth", "peer", "name", "r0", "netns", r],
            ["ip", "-n", r, "link", "add", "r1", "type", "veth", "peer", "name", "eth0", "netns", d],
            ["ip", "addr", "add", f"{self.src4}/24", "dev", h],
            ["ip", "link", "set", h, "up"],
            ["ip", "-n", r, "addr", "add", f"{self.router4}/24", "dev", "r0"],
            ["ip", "-n", r, "addr", "add", "10.252.2.1/24", "dev", "r1"],
            ["ip", "-n", r, "link", "set", "lo", "up"],
            ["ip", "-n", r, "link", "set", "r0", "up"],
            ["ip", "-n", r, "link", "set", "r1", "up"],
            ["ip", "-n", d, "addr", "add", f"{self.dst4}/24", "dev", "eth0"],
            ["ip", "-n", d, "link", "set", "lo", "up"],
            ["ip", "-n", d, "link", "set", "eth0", "up"],
            ["ip", "-n", d, "route", "add", "default", "via", "10.252.2.1"],
            ["ip", "route", "add", "10.252.2.0/24", "via", self.router4],
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            # back-to-back rejects must each produce an ICMP error, not rate-limited silence
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
        ]
        try:
            for step in steps:
                run(*step)
            self.nft("add table inet fw")
            self.nft("add chain inet fw forward { type filter hook forward priority 0; policy accept; }")
        except subprocess.CalledProcessError as exc:
            self.down()
            raise RuntimeError(f"building the fenced network failed at {exc.cmd}: {exc.stderr}") from exc
        return self

    def nft(self, command: str) -> None:
        run("ip", "netns", "exec", self.rtr, "nft", command)

    def block(self, rule: str) -> None:
        """Add a rule to the router's forward chain, e.g. `udp dport 88 drop`."""
        self.nft(f"add rule inet fw forward {rule}")

    def flush(self) -> None:
        self.nft("flush chain inet fw forward")

    def down(self) -> None:
        for args in (
            ["ip", "route", "del", "10.252.2.0/24"],
            ["ip", "link", "del", self.host_if],
            ["ip", "netns", "del", self.rtr],
            ["ip", "netns", "del", self.dst],
        ):
            run(*args, check=False)
