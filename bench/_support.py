"""Shared machinery of the benchmarks: a network namespace of our own, synthetic inventories, the real
`serve` process, /proc accounting and a small HTTP client.

Safety: every target address the benchmarks use is checked to be in 127.0.0.0/8, and the benchmarks
run inside a network namespace they create (its own loopback), so no packet leaves this machine.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = "monitor.bench.example"  # an observer: not in the inventory
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ENV_NETNS = "EFXBENCH_NETNS"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def check_loopback(address: str) -> str:
    """The address itself, or an error: benchmark traffic goes to 127.0.0.0/8 only."""
    if ipaddress.ip_address(address) not in LOOPBACK:
        raise ValueError(f"{address} is not a loopback address; benchmarks only probe 127.0.0.0/8")
    return address


# ---- network namespace -----------------------------------------------------------------------------
def filtered_rules(networks: Sequence[str]) -> str:
    """An nftables ruleset that drops every TCP segment to `networks` (SYNs go unanswered)."""
    for net in networks:
        if not ipaddress.ip_network(net).subnet_of(LOOPBACK):  # type: ignore[arg-type]
            raise ValueError(f"{net} is not inside 127.0.0.0/8")
    rules = "\n".join(f"    ip daddr {net} meta l4proto tcp drop" for net in networks)
    return (
        "table inet efxbench {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
        f"{rules}\n  }}\n}}\n"
    )


class Netns:
    """`ip netns add NAME`, lo up, optional nft rules; deleted (with its rules) on exit."""

    def __init__(self, name: str, nft_rules: str | None = None) -> None:
        self.name = name
        self.nft_rules = nft_rules

    def __enter__(self) -> Netns:
        if os.geteuid() != 0:
            raise SystemExit("the benchmarks need root (network namespaces, nftables)")
        self._delete(quiet=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)
            if self.nft_rules:
                subprocess.run(
                    ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
                    input=self.nft_rules.encode(),
                    check=True,
                )
        except BaseException:
            self._delete(quiet=True)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._delete(quiet=False)

    def _delete(self, quiet: bool) -> None:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        if any(line.split()[0] == self.name for line in out.splitlines() if line.strip()):
            subprocess.run(["ip", "netns", "del", self.name], check=not quiet)

    def run_module(self, module: str, argv: Sequence[str], timeout: float) -> int:
        """Run `python -m module argv` inside the namespace (the benchmark's inner half)."""
        env = dict(os.environ)
        env[ENV_NETNS] = self.name
        cmd = ["ip", "netns", "exec", self.name, sys.executable, "-m", module, *argv]
        return subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, check=False).returncode


def assert_inside(name: str) -> None:
    """Refuse to run the traffic-making half anywhere but in the namespace the outer half made."""
    found = subprocess.run(
        ["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True, check=False
    ).stdout.strip()
    if os.environ.get(ENV_NETNS) != name or found != name:
        raise SystemExit(f"refusing to run outside network namespace {name!r} (in {found!r})")


# ---- /proc -------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime per thread name (/proc/<pid>/task/*/comm; threads of one name summed). The service
    names its own threads (exporter/threads.py): ef-prober, ef-gzip, ef-flush, ef-upkeep; the rest keep
    the process's name (the HTTP server's event loop and its worker threads)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---- HTTP --------------------------------------------------------------------------------------------
@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes  # decompressed when the server gzipped it and keep_body was set
    wire_bytes: int  # body bytes on the wire (compressed size when gzipped)
    ttfb: float  # request sent -> first response byte
    total: float  # request sent -> last body byte


def http_get(
    port: int,
    path: str,
    *,
    gzip_ok: bool = False,
    timeout: float = 60.0,
    keep_body: bool = True,
    host: str = "127.0.0.1",
    body_limit: int | None = None,
) -> HttpResult:
    """One GET on a fresh connection, timed from the request to the last byte (cheap on the client).

    `body_limit` keeps only the first that many (decompressed) bytes of the body.
    """
    check_loopback(host)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if gzip_ok:
        request += "Accept-Encoding: gzip\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        started = time.perf_counter()
        sock.sendall((request + "\r\n").encode())
        head = bytearray()
        ttfb = 0.0
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response headers")
            if not head:
                ttfb = time.perf_counter() - started
            head += chunk
        end = head.index(b"\r\n\r\n")
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        rest = head[end + 4 :]
        length = headers.get("content-length")
        if length is not None:
            size = int(length)
            buf = bytearray(size)
            view = memoryview(buf)
            got = min(len(rest), size)
            view[:got] = rest[:got]
            while got < size:
                n = sock.recv_into(view[got:], size - got)
                if n == 0:
                    raise ConnectionError("connection closed mid-body")
                got += n
        else:  # chunked or until close; benchmarks only need the bytes
            buf = bytearray(rest)
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        total = time.perf_counter() - started
    wire = len(buf)
    body = bytes(buf) if keep_body else b""
    if keep_body and headers.get("content-encoding") == "gzip":
        if body_limit is None:
            body = gzip.decompress(body)
        else:
            body = zlib.decompressobj(31).decompress(body, body_limit)
    elif body_limit is not None:
        body = body[:body_limit]
    return HttpResult(status, headers, body, wire, ttfb, total)


def wait_http(port: int, path: str, deadline_s: float, want_status: int = 200) -> float:
    """Poll until `path` answers `want_status`; returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            if http_get(port, path, timeout=5.0).status == want_status:
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > deadline_s:
            raise TimeoutError(f"127.0.0.1:{port}{path} not {want_status} after {deadline_s:g}s")
        time.sleep(0.25)


def samples(text: str, stop_at: str | None = None) -> Iterator[tuple[str, str, float]]:
    """(name, label text, value) for each sample of a text exposition; stops at a line with `stop_at`."""
    for line in text.splitlines():
        if stop_at is not None and line.startswith(stop_at):
            return
        if not line or line[0] == "#":
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        yield name, labels.rstrip("}"), float(value)


def exporter_metrics(port: int) -> dict[str, float]:
    """Our exporter's own metrics (not the per-path families), scraped as Prometheus does (gzip).

    Counters and gauges with labels are summed per name; `name{labels}` keys keep the split too.
    """
    # the exporter's own metrics come first: the head of the body is enough
    body = http_get(port, "/metrics", gzip_ok=True, body_limit=1 << 20).body.decode(errors="replace")
    out: dict[str, float] = {}
    for name, labels, value in samples(body, stop_at="# HELP exchange_path_"):
        out[name] = out.get(name, 0.0) + value
        if labels:
            out[f"{name}{{{labels}}}"] = value
    return out


# ---- inventory ---------------------------------------------------------------------------------------
PATHS_PER_SERVER = 15  # a non-DAG Exchange 2019 Mailbox server seen from an observer (81 since 0.1 fidelity)
PATHS_PER_GC = 9  # a global catalog: 53, 88, 135, 389, 445, 464, 636, 3268, 3269
PATHS_PER_DC = 7  # a plain DC: the same less 3268/3269


def _composition(n_paths: int) -> tuple[int, int, int]:
    """(servers, gcs, dcs) whose plan is exactly n_paths long (most n >= 48, any multiple of 15)."""
    servers = n_paths // PATHS_PER_SERVER
    while servers >= 0:
        rest = n_paths - servers * PATHS_PER_SERVER
        for gcs in range(rest // PATHS_PER_GC + 1):
            if (rest - gcs * PATHS_PER_GC) % PATHS_PER_DC == 0:
                return servers, gcs, (rest - gcs * PATHS_PER_GC) // PATHS_PER_DC
        servers -= 1
    raise ValueError(f"cannot compose a plan of {n_paths} paths")


def _address(prefix: str, i: int) -> str:
    a, b = divmod(i, 250)
    if a > 255:
        raise ValueError("too many members for one /16")
    return check_loopback(f"{prefix}.{a}.{b + 1}")


def inventory_data(groups: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """A static inventory: for each (prefix such as "127.1", n_paths) group, members on prefix.0.0/16
    whose plan from SOURCE (an observer) has exactly n_paths TCP paths."""
    servers: list[dict[str, Any]] = []
    dcs: list[dict[str, Any]] = []
    for g, (prefix, n_paths) in enumerate(groups):
        n_servers, n_gcs, n_dcs = _composition(n_paths)
        i = 0
        for s in range(n_servers):
            servers.append(
                {
                    "name": f"EX{g}{s:05d}",
                    "fqdn": f"ex{g}{s:05d}.corp{g}.bench.example",
                    "address": _address(prefix, i),
                    "roles": ["mailbox"],
                    "version": "15.2.1544.4",
                    "site": f"Site-{s % 40:02d}",
                }
            )
            i += 1
        for d in range(n_gcs + n_dcs):
            dcs.append(
                {
                    "name": f"DC{g}{d:05d}",
                    "fqdn": f"dc{g}{d:05d}.corp{g}.bench.example",
                    "address": _address(prefix, i),
                    "site": f"Site-{d % 40:02d}",
                    "global_catalog": d < n_gcs,
                }
            )
            i += 1
    return {
        "organisation": "Bench Organisation",
        "servers": servers,
        "domain_controllers": dcs,
        "_paths": sum(n for _prefix, n in groups),
    }


def write_inventory(path: Path, data: dict[str, Any]) -> None:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with path.open("w") as handle:
        yaml.dump(_public(data), handle, Dumper=dumper, sort_keys=False)


def _public(data: dict[str, Any]) -> dict[str, Any]:
    """The inventory without the benchmark's own bookkeeping keys."""
    return {key: value for key, value in data.items() if not key.startswith("_")}


def planned_endpoints(data: dict[str, Any]) -> list[tuple[str, int]]:
    """The (address, port) of every path `serve --connect-only` plans from this inventory, in plan order.

    Checks that it is one bare TCP connect per path and as many paths as inventory_data() was asked for.
    """
    import inspect

    from exporter.compose import AVAILABLE_CHECKS
    from exporter.inventory.static import parse_inventory
    from exporter.plan.planner import plan

    kwargs: dict[str, Any] = {"checks": AVAILABLE_CHECKS}
    if "connect_only" in inspect.signature(plan).parameters:
        kwargs["connect_only"] = True
    paths = plan(parse_inventory(_public(data)), SOURCE, **kwargs)
    odd = {(p.check, p.proto) for p in paths} - {("tcp", "tcp")}
    if odd:
        raise RuntimeError(f"the plan has more than bare TCP connects: {sorted(odd)}")
    wanted = data.get("_paths")
    if wanted is not None and len(paths) != wanted:
        raise RuntimeError(f"the inventory plans {len(paths)} paths, not {wanted}")
    return [(check_loopback(p.address or ""), p.port) for p in paths]


# ---- processes ---------------------------------------------------------------------------------------
class Workdir:
    """A temporary directory for inventories and logs; kept (and named) when KEEP_BENCH_DIR=1."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if os.environ.get("KEEP_BENCH_DIR") == "1" or exc is not None:
            print(f"(logs kept in {self.path})", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


class Process:
    """A child process with its output in a log file, stopped (TERM, then KILL) on exit."""

    def __init__(self, name: str, cmd: Sequence[str], log_dir: Path, *, stdout_pipe: bool = False) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log_dir / f"{name}.log"
        self._log = self.log.open("wb")
        self.popen = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10.0)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5.0)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@functools.cache
def serve_flags() -> frozenset[str]:
    """The long options this checkout's `serve` accepts (the CLI is still growing)."""
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(word.rstrip(",=") for word in out.split() if word.startswith("--"))


def serve_cmd(
    inventory: Path,
    port: int,
    *,
    interval: float,
    timeout: float,
    attempts: int = 3,
    extra: Sequence[str] = (),
) -> list[str]:
    """The production command line (`exchange-firewall-exporter serve ...`, via `python -m exporter`).

    The baseline state file (when this build has one) goes next to the inventory, never to the system
    default, so parallel benchmark processes do not share one and nothing is left in /var/lib. With
    --connect-only (when this build has protocol checks) every path is a bare TCP connect: what the
    benchmarks compare and count.
    """
    cmd = [
        sys.executable,
        "-m",
        "exporter",
        "serve",
        "--inventory",
        str(inventory),
        "--source",
        SOURCE,
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--interval",
        f"{interval:g}",
        "--timeout",
        f"{timeout:g}",
        "--attempts",
        str(attempts),
        "--log.level",
        "warning",
    ]
    if "--connect-only" in serve_flags():
        cmd.append("--connect-only")
    if "--state-file" in serve_flags():
        cmd += ["--state-file", str(inventory.with_name(f"{inventory.stem}-{port}.state.sqlite"))]
    return cmd + list(extra)


def start_listeners(endpoints: Sequence[tuple[str, int]], log_dir: Path, max_seconds: float) -> Process:
    """A process accepting (and closing) connections on every endpoint: the 'open' targets."""
    spec = log_dir / "listen.txt"
    spec.write_text(
        "".join(f"{host if host == '0.0.0.0' else check_loopback(host)} {port}\n" for host, port in endpoints)
    )
    proc = Process(
        "listeners",
        [sys.executable, "-m", "bench._listener", str(spec), f"{max_seconds:g}"],
        log_dir,
        stdout_pipe=True,
    )
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode().strip()
    if not line.startswith("ready"):
        proc.stop()
        raise RuntimeError(f"listeners did not start: {line!r}\n{proc.tail()}")
    return proc


def environment() -> str:
    """One line saying what was measured where: commit (and whether exporter/ had local edits), CPU,
    kernel, Python, load average. Read-only git."""

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    head = run("git", "rev-parse", "--short", "HEAD") or "?"
    dirty = len(run("git", "status", "--porcelain", "--", "exporter").splitlines())
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    changed = f" + {dirty} changed files in exporter/" if dirty else ""
    return (
        f"commit {head}{changed}; {os.cpu_count()} x {model}; Linux {os.uname().release}; "
        f"Python {sys.version.split()[0]}; load average {load}"
    )


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
