"""A Samba AD DC serving what the protocol probes speak to: DNS, Kerberos, CLDAP, LDAP/LDAPS/GC, the RPC
endpoint mapper with its dynamic ports, and SMB.

    template()                       provision PROBE.EXAMPLE.TEST once per process (~5 s) into a temp dir
    ProbeDC(ip, workdir, pki).start() copy the template (0.1 s), write smb.conf for `ip`, run `samba`;
                                     `netns=` runs it inside a network namespace the test created
    ProbeDC.stop()                   stop its process group and any samba-dcerpcd/rpcd_* left (pidfiles),
                                     then delete the copy
    LoopbackAlias(ip)                a /32 alias on `lo` inside 127.0.0.0/8, removed again if we added it

This is tests/lab/samba.py's recipe (lab-notes.md) cut down for probes: no Exchange schema, more
`server services` (rpc, s3fs) and a namespace option. Missing tools raise, never skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.tls import LabPki

REALM = "PROBE.EXAMPLE.TEST"
DOMAIN = "probe.example.test"
NETBIOS = "PROBE"
DC_NAME = "DC1"
DC_FQDN = f"dc1.{DOMAIN}"
DC_IP = "127.0.78.1"
ADMIN_PASSWORD = "Probe-Admin-Pass1!"  # a lab secret for a lab domain
ALL_SERVICES = "ldap cldap kdc dns rpc s3fs"

_template: Path | None = None


def require_samba() -> None:
    missing = [tool for tool in ("samba", "samba-tool", "ip") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"the probe DC needs {', '.join(missing)}: apt-get install samba samba-ad-dc samba-ad-provision "
            "winbind iproute2"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the probe DC needs root (a loopback alias, ports 53/88/135/389/445)")


def _run(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr or done.stdout}"
        )
    return done.stdout


def template() -> Path:
    """The provisioned directory, once per process; removed at exit."""
    global _template
    if _template is None:
        require_samba()
        base = Path(tempfile.mkdtemp(prefix="efx-probe-dc-"))
        atexit.register(shutil.rmtree, base, True)
        root = base / "template"
        _run(
            "samba-tool", "domain", "provision", f"--targetdir={root}", f"--realm={REALM}",
            f"--domain={NETBIOS}", f"--adminpass={ADMIN_PASSWORD}", "--server-role=dc",
            "--dns-backend=SAMBA_INTERNAL", f"--host-name={DC_NAME}", f"--host-ip={DC_IP}", "--site=HQ",
            "--option=dns forwarder = ", f"--option=interfaces = {DC_IP}",
            "--option=bind interfaces only = yes",
        )  # fmt: skip
        _template = root
    return _template


@dataclass
class LoopbackAlias:
    ip: str
    added: bool = False

    def __enter__(self) -> LoopbackAlias:
        if not self.ip.startswith("127."):
            raise ValueError(f"{self.ip}: only loopback aliases here")
        if f"inet {self.ip}/" not in _run("ip", "-4", "addr", "show", "dev", "lo"):
            _run("ip", "addr", "add", f"{self.ip}/32", "dev", "lo")
            self.added = True
        return self

    def __exit__(self, *_: object) -> None:
        if self.added:
            subprocess.run(
                ["ip", "addr", "del", f"{self.ip}/32", "dev", "lo"], capture_output=True, check=False
            )


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for_port(ip: str, port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"samba exited with {process.returncode} before {ip}:{port} listened")
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"samba did not listen on {ip}:{port} within {timeout:g}s")


@dataclass
class ProbeDC:
    """One `samba` serving a copy of the template on `ip`."""

    ip: str
    workdir: Path
    pki: LabPki | None = None
    services: str = ALL_SERVICES
    netns: str | None = None
    wait_ports: tuple[int, ...] = (389, 135)
    process: subprocess.Popen[bytes] | None = None
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.workdir / f"dc-{self.ip}"

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def write_conf(self) -> None:
        r = self.root
        for sub in ("run", "log", "cache", "state"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        tls = "tls enabled = no"
        if self.pki is not None:
            good = self.pki.servers["good"]
            tls = (f"tls enabled = yes\n\ttls keyfile = {good.key}\n\ttls certfile = {good.cert}\n"
                   f"\ttls cafile = {self.pki.ca_file}")  # fmt: skip
        self.smb_conf.write_text(f"""[global]
	netbios name = {DC_NAME}
	realm = {REALM}
	workgroup = {NETBIOS}
	server role = active directory domain controller
	private dir = {r}/private
	binddns dir = {r}/bind-dns
	lock directory = {r}
	state directory = {r}/state
	cache directory = {r}/cache
	pid directory = {r}/run
	ncalrpc dir = {r}/run/ncalrpc
	log file = {r}/log/log.%m
	logging = file
	log level = 1
	interfaces = {self.ip}
	bind interfaces only = yes
	disable netbios = yes
	dns forwarder =
	server services = {self.services}
	dns update command = /bin/true
	spn update command = /bin/true
	{tls}
[sysvol]
	path = {r}/state/sysvol
	read only = No
[netlogon]
	path = {r}/state/sysvol/{DOMAIN}/scripts
	read only = No
""")

    def start(self, timeout: float = 30) -> ProbeDC:
        shutil.copytree(
            template(),
            self.root,
            symlinks=True,
            ignore=shutil.ignore_patterns("run", "log", "*.sock", "msg.lock"),
        )
        self.write_conf()
        command = ["samba", "--foreground", "--no-process-group", "-s", str(self.smb_conf)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with (self.root / "log" / "samba.stdout").open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            for port in self.wait_ports:
                wait_for_port(self.ip, port, timeout, self.process)
        except RuntimeError as exc:
            self.stop()
            tail = (self.root / "log" / "samba.stdout").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        pids: list[int] = []
        if self.process is not None:
            pgid = self.process.pid
            pids.append(pgid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait(5)
            self.process = None
        for pidfile in (self.root / "run").glob("*.pid"):
            text = pidfile.read_text().strip()
            if text.isdigit() and _alive(int(text)):
                pids.append(int(text))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(text), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in pids:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)  # 42 MB a copy: pytest keeps old tmp dirs around

    def listening_ports(self) -> set[int]:
        """TCP ports a process of this DC listens on (ground truth for the endpoint mapper's answers)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        out = _run(*prefix, "ss", "-Hltn", "src", self.ip)
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}
