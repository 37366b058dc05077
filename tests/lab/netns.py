"""A real routed network on one machine: this host -> router namespace (nftables) -> target namespace.

Tests use 10.251 (listeners; conftest's session lab) and 10.252 (a Samba DC for the protocol probes, which
needs ports the listeners hold); the long soak uses 10.249. Each lab has its own namespaces and routes.

    root ns (the prober) --veth-- rtr (forwarding, nftables `forward` chain) --veth-- dst (listeners)
    10.251.1.1, fdfb:1::1         10.251.1.2 | 10.251.2.1                           10.251.2.2, fdfb:2::2

Addresses live only in namespaces this module creates; the router has no uplink, so nothing leaves.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, input=input)


def wait_reachable(addresses: tuple[str, ...], timeout: float = 15.0) -> None:
    """Until each address answers (a RST from port 9, closed, is an answer), or RuntimeError."""
    deadline = time.monotonic() + timeout
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        while True:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                code = sock.connect_ex((address, 9))
            if code == errno.ECONNREFUSED:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab target {address} not reachable: {errno.errorcode.get(code, code)}")
            time.sleep(0.2)


def require_tools(*tools: str) -> None:
    """Fail (never skip) when the lab cannot be built: a missing tool is a broken CI, not a pass."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"test lab needs {', '.join(missing)}: run `make test` (it installs them)")
    if os.geteuid() != 0:
        raise RuntimeError("test lab needs root for network namespaces")


@dataclass
class RoutedLab:
    tag: str = ""  # namespace/interface names; default: the subnet and this process
    net: int = 251  # 10.<net>.x.x and fd<net>:: : several labs (the probes' DC lab, a soak) side by side

    def __post_init__(self) -> None:
        self.tag = self.tag or f"{self.net}-{os.getpid() % 100000}"

    @property
    def src4(self) -> str:
        return f"10.{self.net}.1.1"

    @property
    def router4(self) -> str:
        """The router's address on the prober's side (the sender of its ICMP errors)."""
        return f"10.{self.net}.1.2"

    @property
    def dst4(self) -> str:
        return f"10.{self.net}.2.2"

    @property
    def src6(self) -> str:
        return f"fd{self.net:02x}:1::1"

    @property
    def dst6(self) -> str:
        return f"fd{self.net:02x}:2::2"

    @property
    def dst_subnet4(self) -> str:
        """The target namespace's IPv4 /24 prefix, e.g. '10.251.2.'"""
        return f"10.{self.net}.2."

    listeners: list[subprocess.Popen[str]] = field(default_factory=list)
    listening: dict[int, subprocess.Popen[str]] = field(default_factory=dict)  # port -> its listener

    @property
    def rtr(self) -> str:
        return f"efx-rtr-{self.tag}"

    @property
    def dst(self) -> str:
        return f"efx-dst-{self.tag}"

    @property
    def host_if(self) -> str:
        return f"efxh{self.tag}"[:15]

    def up(self) -> RoutedLab:
        require_tools("ip", "nft")
        self.down(quiet=True)
        r, d, h, n = self.rtr, self.dst, self.host_if, self.net
        steps = [
            ["ip", "netns", "add", r],
            ["ip", "netns", "add", d],
            ["ip", "link", "add", h, "type", "veth", "peer", "name", "r0", "netns", r],
            ["ip", "-n", r, "link", "add", "r1", "type", "veth", "peer", "name", "eth0", "netns", d],
            ["ip", "addr", "add", f"10.{n}.1.1/24", "dev", h],
            ["ip", "-6", "addr", "add", f"fd{n:02x}:1::1/64", "dev", h, "nodad"],
            ["ip", "link", "set", h, "up"],
            ["ip", "-n", r, "addr", "add", f"10.{n}.1.2/24", "dev", "r0"],
            ["ip", "-n", r, "-6", "addr", "add", f"fd{n:02x}:1::2/64", "dev", "r0", "nodad"],
            ["ip", "-n", r, "addr", "add", f"10.{n}.2.1/24", "dev", "r1"],
            ["ip", "-n", r, "-6", "addr", "add", f"fd{n:02x}:2::1/64", "dev", "r1", "nodad"],
            ["ip", "-n", r, "link", "set", "lo", "up"],
            ["ip", "-n", r, "link", "set", "r0", "up"],
            ["ip", "-n", r, "link", "set", "r1", "up"],
            ["ip", "-n", d, "addr", "add", f"10.{n}.2.2/24", "dev", "eth0"],
            ["ip", "-n", d, "-6", "addr", "add", f"fd{n:02x}:2::2/64", "dev", "eth0", "nodad"],
            ["ip", "-n", d, "link", "set", "lo", "up"],
            ["ip", "-n", d, "link", "set", "eth0", "up"],
            ["ip", "-n", d, "route", "add", "default", "via", f"10.{n}.2.1"],
            ["ip", "-n", d, "-6", "route", "add", "default", "via", f"fd{n:02x}:2::1"],
            ["ip", "route", "add", f"10.{n}.2.0/24", "via", f"10.{n}.1.2"],
            ["ip", "-6", "route", "add", f"fd{n:02x}:2::/64", "via", f"fd{n:02x}:1::2"],
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            # back-to-back rejects must each produce an ICMP error, not rate-limited silence
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"],
        ]
        try:
            for step in steps:
                run(*step)
            self.nft("add table inet fw")
            self.nft("add chain inet fw forward { type filter hook forward priority 0; policy accept; }")
        except subprocess.CalledProcessError as exc:
            self.down(quiet=True)
            raise RuntimeError(f"building the lab failed at {exc.cmd}: {exc.stderr}") from exc
        self._wait_reachable()
        return self

    def _wait_reachable(self, timeout: float = 15.0) -> None:
        """Until the target answers on both families (a RST from a closed port is an answer): IPv6 link-
        local addresses finish duplicate address detection and neighbour discovery settles first, so the
        first probe of a test never meets a half-built network."""
        wait_reachable((self.dst4, self.dst6), timeout)

    def nft(self, command: str) -> None:
        run("ip", "netns", "exec", self.rtr, "nft", command)

    def block(self, rule: str) -> None:
        """Add a rule to the router's forward chain, e.g. `tcp dport 8002 drop`."""
        self.nft(f"add rule inet fw forward {rule}")

    def flush(self) -> None:
        self.nft("flush chain inet fw forward")

    def listen(self, *ports: int) -> None:
        """Start real listeners in the target namespace (stopped by `down`); ports that already have one
        (the lab lives for the whole session) are left as they are."""
        ports = tuple(
            p for p in dict.fromkeys(ports) if p not in self.listening or self.listening[p].poll() is not None
        )
        if not ports:
            return
        listener = subprocess.Popen(
            ["ip", "netns", "exec", self.dst, sys.executable, "-m", "tests.lab.listener", *map(str, ports)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.listeners.append(listener)
        self.listening.update(dict.fromkeys(ports, listener))
        assert listener.stdout is not None
        line = listener.stdout.readline()
        if line.strip() != "ready":
            errors = listener.stderr.read() if listener.stderr else ""
            raise RuntimeError(f"listener did not start: {line!r} {errors}")

    def down(self, quiet: bool = False) -> None:
        for listener in self.listeners:
            listener.kill()
            listener.wait(5)
        self.listeners.clear()
        self.listening.clear()
        for args in (
            ["ip", "route", "del", f"10.{self.net}.2.0/24"],
            ["ip", "-6", "route", "del", f"fd{self.net:02x}:2::/64"],
            ["ip", "link", "del", self.host_if],
            ["ip", "netns", "del", self.rtr],
            ["ip", "netns", "del", self.dst],
        ):
            run(*args, check=False)
        time.sleep(0.05)
