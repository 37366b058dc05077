"""/metrics scrape time, body size and process RSS of the real `serve` process with 10k and 100k paths.

For each size: a synthetic inventory whose plan has exactly that many paths (Exchange 2019 Mailbox
servers and GCs on 127.2.0.0/16, seen from an observer), `python -m exporter serve --interval 30
--timeout 2` (production settings: it keeps probing at N/30 probes per second during the scrapes, as it
would in production), every target open (one wildcard listener per catalogue port, inside network
namespace `efxbench-scrape`, which this creates and deletes). Once /-/ready says every path has a result,
it scrapes /metrics --rounds times without and with `Accept-Encoding: gzip` (Prometheus always sends
it), one scrape at a time with a pause in between, each on a new connection, timing request -> last
byte on the client. RSS (VmRSS) and peak RSS (VmHWM) come from /proc/<pid>/status.

With --profile (default on when py-spy is installed and a 100k scrape misses 300 ms), py-spy samples
the service during extra scrapes and the report lists where the process spent them.

    .venv/bin/python -m bench.scrape [--sizes 10000,100000] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench._support import (
    Netns,
    Process,
    Workdir,
    assert_inside,
    cpu_seconds,
    environment,
    exporter_metrics,
    http_get,
    inventory_data,
    median,
    memory_kib,
    planned_endpoints,
    serve_cmd,
    start_listeners,
    wait_http,
    write_inventory,
)

NS = "efxbench-scrape"
PORT = 19300
GOAL_S = 0.300


@dataclass
class Scrape:
    gzip: bool
    total: float
    ttfb: float
    wire_bytes: int
    cpu: float  # process CPU over the scrape (includes background probing over the same time)


@dataclass
class SizeResult:
    paths: int
    startup_s: float = 0.0  # process start -> /-/healthy
    ready_s: float = 0.0  # process start -> /-/ready (every path probed once)
    rss_ready_kib: int = 0
    rss_after_kib: int = 0
    hwm_after_kib: int = 0
    body_bytes: int = 0
    gzip_bytes: int = 0
    background_cpu: float = 0.0  # process CPU share between scrapes (the probing)
    scrapes: list[Scrape] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    lag_at_rest: float = float("nan")  # the same, over 10 s without scrapes: what probing alone costs
    # (generation, ms) of the collections over 20 ms from 2 s after ready to the end (the steady state)
    gc_pauses: list[tuple[int, float]] = field(default_factory=list)
    profile: list[tuple[str, float]] = field(default_factory=list)

    def times(self, gz: bool) -> list[float]:
        return [s.total for s in self.scrapes if s.gzip is gz]

    def cpus(self, gz: bool) -> list[float]:
        return [s.cpu for s in self.scrapes if s.gzip is gz]


def measure(size: int, work: Path, args: argparse.Namespace) -> SizeResult:
    data = inventory_data([("127.2", size)])
    inventory = work / f"inventory-{size}.yaml"
    write_inventory(inventory, data)
    result = SizeResult(size)
    started = time.monotonic()
    cmd = serve_cmd(inventory, PORT, interval=args.interval, timeout=2.0)
    gc_log = work / f"gc-{size}.log"
    assert cmd[1:3] == ["-m", "exporter"]
    cmd[1:3] = ["-m", "bench._gcwrap", str(gc_log)]  # the same command, with collections > 20 ms logged
    with Process(f"serve-{size}", cmd, work) as proc:
        result.startup_s = wait_http(PORT, "/-/healthy", 300.0)
        wait_http(PORT, "/-/ready", args.interval * 2 + 120.0)
        result.ready_s = time.monotonic() - started
        ready_wall = time.time()
        time.sleep(2.0)
        result.rss_ready_kib = memory_kib(proc.pid)["VmRSS"]
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3.0)
        result.background_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        time.sleep(10.5)  # a window of probing alone, read with one gzip scrape at its end
        result.lag_at_rest = exporter_metrics(PORT).get("exchange_probe_lag_seconds", float("nan"))
        for _ in range(args.rounds):
            for gz in args.kinds:
                c0 = cpu_seconds(proc.pid)
                response = http_get(PORT, "/metrics", gzip_ok=gz, keep_body=False, timeout=120.0)
                cpu = cpu_seconds(proc.pid) - c0
                if response.status != 200:
                    raise RuntimeError(f"/metrics answered {response.status}")
                if gz and response.headers.get("content-encoding") != "gzip":
                    raise RuntimeError("asked for gzip, got an identity body")
                result.scrapes.append(Scrape(gz, response.total, response.ttfb, response.wire_bytes, cpu))
                if gz:
                    result.gzip_bytes = response.wire_bytes
                else:
                    result.body_bytes = response.wire_bytes
                time.sleep(args.pause)
            # the probing loop's worst start lag over the last 10 s, which covered this round's scrapes
            # (reading it is one more gzip scrape)
            result.lags.append(exporter_metrics(PORT).get("exchange_probe_lag_seconds", float("nan")))
        pauses = [line.split() for line in gc_log.read_text().splitlines()]
        result.gc_pauses = [(int(g), float(ms)) for t, g, ms in pauses if float(t) >= ready_wall + 2]
        mem = memory_kib(proc.pid)
        result.rss_after_kib, result.hwm_after_kib = mem["VmRSS"], mem["VmHWM"]
        slow = any(times and median(times) > GOAL_S for times in (result.times(True), result.times(False)))
        if args.profile == "always" or (args.profile == "auto" and slow and size >= 100_000):
            result.profile = profile(proc.pid, work, rounds=3, kinds=args.kinds)
        if not proc.alive():
            raise RuntimeError(f"serve exited:\n{proc.tail()}")
    return result


def profile(pid: int, work: Path, rounds: int, kinds: tuple[bool, ...]) -> list[tuple[str, float]]:
    """py-spy samples of the service while it serves `rounds` plain and gzip scrapes: share per frame."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("(py-spy not installed: no profile; `pip install py-spy`)", file=sys.stderr)
        return []
    out = work / "scrape-profile.txt"
    duration = 4 * rounds + 8
    spy_proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(duration),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--threads",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    for _ in range(rounds):
        for gz in kinds:
            http_get(PORT, "/metrics", gzip_ok=gz, keep_body=False, timeout=120.0)
            time.sleep(0.5)
    spy_proc.wait(duration + 30)
    if not out.exists():
        return []
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if not any("metrics" in f or "scrape" in f or "render" in f or "http" in f.lower() for f in frames):
            continue  # keep the scrape's own frames (thread pool and event loop), not the prober's
        total += n
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
    return [(frame, n / total) for frame, n in inclusive.most_common(40)] if total else []


def report(results: list[SizeResult]) -> str:
    lines = [
        "| paths | body | gzip body | plain median (min-max) ms | gzip median (min-max) ms | "
        "CPU per plain / gzip scrape s | RSS ready | RSS after | peak RSS | goal <300 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        plain, gz = r.times(False), r.times(True)

        def span(values: list[float]) -> str:
            if not values:
                return "-"
            return f"{median(values) * 1000:.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"

        def mid(values: list[float]) -> float:
            return median(values) if values else float("nan")

        met_plain, met_gzip = (not v or median(v) < GOAL_S for v in (plain, gz))
        goal = "met" if met_plain and met_gzip else ("plain met, gzip missed" if met_plain else "missed")
        lines.append(
            f"| {r.paths} | {r.body_bytes / 1e6:.1f} MB | {r.gzip_bytes / 1e6:.1f} MB | {span(plain)} "
            f"| {span(gz)} | {mid(r.cpus(False)):.2f} / {mid(r.cpus(True)):.2f} "
            f"| {r.rss_ready_kib / 1024:.0f} MiB | {r.rss_after_kib / 1024:.0f} MiB "
            f"| {r.hwm_after_kib / 1024:.0f} MiB | {goal} |"
        )
    for r in results:
        longest = max((ms for _g, ms in r.gc_pauses), default=0.0)
        lines.append(
            f"  {r.paths} paths: healthy after {r.startup_s:.1f}s, every path probed after {r.ready_s:.1f}s, "
            f"background (probing) CPU {r.background_cpu * 100:.0f}% of a core; "
            f"first-byte times plain {mid([s.ttfb for s in r.scrapes if not s.gzip]) * 1000:.0f} ms, "
            f"gzip {mid([s.ttfb for s in r.scrapes if s.gzip]) * 1000:.0f} ms; probe lag right after "
            f"rounds max {max(r.lags):.2f} s (without scrapes {r.lag_at_rest:.2f} s); garbage collections "
            f"over 20 ms once ready: {len(r.gc_pauses)}, longest {longest:.0f} ms"
        )
        if r.profile:
            lines.append(f"  profile of {r.paths}-path scrapes (py-spy, share of scrape-related samples):")
            for frame, share in r.profile:
                if share >= 0.02:
                    lines.append(f"    {share * 100:5.1f}%  {frame}")
    return "\n".join(lines)


def inner(args: argparse.Namespace) -> int:
    assert_inside(NS)
    started_env = environment()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[SizeResult] = []
    with Workdir("efxbench-scrape") as work:
        ports = sorted({port for _host, port in planned_endpoints(inventory_data([("127.2", 48)]))})
        with start_listeners([("0.0.0.0", port) for port in ports], work, 900.0):
            for size in sizes:
                print(
                    f"scrape: {size} paths, waiting for every path to be probed once "
                    f"(~{args.interval:g}s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(measure(size, work, args))
    text = report(results)
    print(f"at start: {started_env}\nat end:   {environment()}\n")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.scrape",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated path counts")
    parser.add_argument("--rounds", type=int, default=5, help="scrapes of each kind per size")
    parser.add_argument("--interval", type=float, default=30.0, help="the service's --interval")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument(
        "--encodings",
        default="plain,gzip",
        help="which scrapes each round makes: plain, gzip or both (Prometheus always asks for gzip)",
    )
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    encodings = args.encodings.split(",")
    if not encodings or not set(encodings) <= {"plain", "gzip"}:
        parser.error("--encodings takes plain, gzip or plain,gzip")
    args.kinds = tuple(encoding == "gzip" for encoding in encodings)
    if args.inside:
        return inner(args)
    if args.json:
        argv = [*argv, "--json", os.path.abspath(args.json)]
    with Netns(NS) as ns:
        return ns.run_module("bench.scrape", [*argv, "--inside"], timeout=1200)


if __name__ == "__main__":
    sys.exit(main())
