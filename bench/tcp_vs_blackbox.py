"""CPU per TCP probe: our `serve` as it runs in production vs blackbox_exporter's tcp_connect at saturation.

One run, same targets, three mixes:
  open      real listeners on 127.1.0.0/16 (a separate process accepts and closes)
  refused   127.2.0.0/16, nothing listening: RST
  filtered  127.3.0.0/16, an nftables rule in our own network namespace drops every TCP segment

Ours: one real `python -m exporter serve --connect-only` per mix with N paths at --interval I --timeout T
(so it probes at its natural N/I probes per second), warmed up for one interval + 2 s (every path probed
once, so the steady state is measured, not first-probe setup), then its CPU (utime+stime of the whole
process, from /proc/<pid>/stat) over a window, divided by the probes it completed in that window (its own
`exchange_probes_total`). /metrics is scraped every 15 s with gzip as Prometheus would, and that CPU is
counted too. A filtered probe of ours is `--attempts` (3) SYN attempts; it still counts as one probe.

Blackbox: /usr/bin/prometheus-blackbox-exporter, module `tcp_connect` (ip4, timeout = ours), driven at
saturation by many keep-alive connections issuing `/probe?module=tcp_connect&target=ADDR:PORT` back to
back, cycling over the same targets; only the blackbox process's CPU is counted, divided by the probes
answered in the window. Open and refused run at 16 and at 128 connections and the cheaper per probe is
reported (blackbox's best case); filtered probes hold a connection for the whole timeout, so that mix
runs with 6000 connections (within the fd limit).

Exits 1 when a mix did not produce what it claims (our results by state, blackbox's probe_success).

Everything (both exporters, the listeners, this driver) runs inside network namespace `efxbench-tcp`,
created here and deleted at the end. Run as root from the repository root:

    .venv/bin/python -m bench.tcp_vs_blackbox [--paths 6000] [--interval 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from bench._support import (
    Netns,
    Process,
    Workdir,
    assert_inside,
    cpu_seconds,
    environment,
    exporter_metrics,
    filtered_rules,
    http_get,
    inventory_data,
    planned_endpoints,
    serve_cmd,
    start_listeners,
    thread_cpu_seconds,
    wait_http,
    write_inventory,
)

NS = "efxbench-tcp"
MIXES: dict[str, str] = {"open": "127.1", "refused": "127.2", "filtered": "127.3"}
OUR_PORT = 19100  # + mix index
BB_PORT = 19115
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
SCRAPE_EVERY = 15.0


@dataclass
class Side:
    probes: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    states: dict[str, float] = field(default_factory=dict)
    attempts_per_probe: float = 1.0
    concurrency: int = 0
    client_cpu: float = 0.0
    located: tuple[int, int] = (0, 0)  # exchange_path_block_location_info series at the window's start, end
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window, by thread name

    @property
    def cpu_ms_per_probe(self) -> float:
        return self.cpu / self.probes * 1000 if self.probes else float("nan")

    @property
    def probes_per_cpu_second(self) -> float:
        return self.probes / self.cpu if self.cpu else float("nan")

    @property
    def rate(self) -> float:
        return self.probes / self.seconds if self.seconds else 0.0

    @property
    def utilisation(self) -> float:
        return self.cpu / self.seconds if self.seconds else 0.0


# ---- ours --------------------------------------------------------------------------------------------
def measure_ours(
    procs: dict[str, Process], ports: dict[str, int], warmup: float, window: float, attempts: int
) -> dict[str, Side]:
    """Warm up, then measure all serve processes over the same window (each its own CPU and counter)."""
    for mix, proc in procs.items():
        wait_http(ports[mix], "/-/healthy", 60.0)
        if not proc.alive():
            raise RuntimeError(f"serve for {mix} exited:\n{proc.tail()}")
    started = time.monotonic()
    time.sleep(max(0.0, warmup - (time.monotonic() - started)))
    first: dict[str, tuple[float, float, dict[str, float]]] = {}
    threads_first: dict[str, dict[str, float]] = {}
    located_at_start = {mix: located(ports[mix]) for mix in procs}
    for mix, proc in procs.items():
        metrics = exporter_metrics(ports[mix])  # the scrape first, then the CPU reading
        first[mix] = (time.monotonic(), cpu_seconds(proc.pid), metrics)
        threads_first[mix] = thread_cpu_seconds(proc.pid)
    end = time.monotonic() + window
    next_scrape = time.monotonic() + SCRAPE_EVERY
    while next_scrape < end - 1.0:  # Prometheus' scrapes in between, counted in the CPU
        time.sleep(max(0.0, next_scrape - time.monotonic()))
        for mix in procs:
            exporter_metrics(ports[mix])
        next_scrape += SCRAPE_EVERY
    time.sleep(max(0.0, end - time.monotonic()))
    out: dict[str, Side] = {}
    for mix, proc in procs.items():
        metrics = exporter_metrics(ports[mix])
        t1, c1 = time.monotonic(), cpu_seconds(proc.pid)
        threads = thread_cpu_seconds(proc.pid)
        t0, c0, m0 = first[mix]
        states = {
            key.split('"')[1]: metrics[key] - m0.get(key, 0.0)
            for key in metrics
            if key.startswith("exchange_probes_total{")
        }
        probes = int(metrics["exchange_probes_total"] - m0["exchange_probes_total"])
        filtered = states.get("filtered", 0.0)
        side = Side(
            probes,
            t1 - t0,
            c1 - c0,
            {k: v for k, v in states.items() if v},
            attempts_per_probe=1 + (attempts - 1) * filtered / probes if probes else 1.0,
            concurrency=int(metrics.get("exchange_probes_in_flight", 0)),
            threads={
                name: spent - threads_first[mix].get(name, 0.0)
                for name, spent in threads.items()
                if spent > threads_first[mix].get(name, 0.0)
            },
        )
        out[mix] = side
    for mix, side in out.items():  # after the window's CPU readings: these full scrapes are not counted
        side.located = (located_at_start[mix], located(ports[mix]))
    return out


def located(port: int) -> int:
    """How many blocked paths the service has located (its exchange_path_block_location_info series)."""
    body = http_get(port, "/metrics", gzip_ok=True, timeout=60.0).body
    return body.count(b"\nexchange_path_block_location_info{")


# ---- blackbox ----------------------------------------------------------------------------------------
class Driver:
    """Keep-alive HTTP/1.1 connections to blackbox, each sending the next /probe as soon as one answers."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.requests = [
            f"GET /probe?module=tcp_connect&target={host}:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            for host, port in targets
        ]
        self.next = 0
        self.done = 0
        self.success = 0
        self.bad = 0
        self.stopping = False

    def request(self) -> bytes:
        req = self.requests[self.next]
        self.next = (self.next + 1) % len(self.requests)
        return req


class ProbeConnection(asyncio.Protocol):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.driver.stopping:
            self.transport.close()
            return
        self.buf.clear()
        self.need = -1
        self.transport.write(self.driver.request())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            if at < 0:
                raise RuntimeError(f"blackbox answered without Content-Length: {head!r}")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            self.body_at = end + 4
            self.need = self.body_at + length
            if not head.startswith(b"http/1.1 200"):
                self.driver.bad += 1
        if len(self.buf) >= self.need:
            self.driver.done += 1
            if b"\nprobe_success 1" in self.buf[self.body_at : self.need]:
                self.driver.success += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def drive_blackbox(
    pid: int, port: int, targets: list[tuple[str, int]], connections: int, warmup: float, window: float
) -> tuple[Side, float]:
    loop = asyncio.get_running_loop()
    driver = Driver(targets)
    transports: list[asyncio.BaseTransport] = []
    for i in range(connections):
        transport, _ = await loop.create_connection(lambda: ProbeConnection(driver), "127.0.0.1", port)
        transports.append(transport)
        if i % 200 == 199:
            await asyncio.sleep(0.02)  # let Go's accept loop keep up
    await asyncio.sleep(warmup)
    t0, c0, d0, s0, me0 = time.monotonic(), cpu_seconds(pid), driver.done, driver.success, os.times()
    await asyncio.sleep(window)
    t1, c1, d1, s1, me1 = time.monotonic(), cpu_seconds(pid), driver.done, driver.success, os.times()
    driver.stopping = True
    for conn in transports:
        conn.close()
    await asyncio.sleep(0.2)
    probes = d1 - d0
    side = Side(
        probes,
        t1 - t0,
        c1 - c0,
        {"success": s1 - s0, "failure": probes - (s1 - s0)},
        concurrency=connections,
        client_cpu=(me1.user + me1.system) - (me0.user + me0.system),
    )
    if driver.bad:
        raise RuntimeError(f"blackbox answered {driver.bad} probes with a non-200 status")
    return side, (s1 - s0) / probes if probes else 0.0


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def blackbox_config(work: Path, timeout: float) -> Path:
    path = work / "blackbox.yml"
    path.write_text(
        "modules:\n  tcp_connect:\n    prober: tcp\n"
        f"    timeout: {int(timeout * 1000)}ms\n"
        "    tcp:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n"
    )
    return path


# ---- report ------------------------------------------------------------------------------------------
def report(
    ours: dict[str, Side], bb: dict[str, Side], bb_runs: dict[str, list[Side]], args: argparse.Namespace
) -> str:
    lines = [
        f"ours: {args.paths} paths per mix, --interval {args.interval:g} --timeout {args.timeout:g} "
        f"--attempts {args.attempts}, window {args.window:g}s after {args.interval + 2:g}s warm-up; "
        f"blackbox: saturated, window {args.bb_window:g}s, the cheapest of its runs per mix",
        "",
        "| mix | ours probes/s | ours CPU % | ours CPU ms/probe | blackbox probes/s | blackbox CPU % "
        "| blackbox CPU ms/probe | ratio (bb/ours) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mix in MIXES:
        o, b = ours[mix], bb[mix]
        lines.append(
            f"| {mix} | {o.rate:.0f} | {o.utilisation * 100:.1f} | {o.cpu_ms_per_probe:.4f} | {b.rate:.0f} "
            f"| {b.utilisation * 100:.0f} | {b.cpu_ms_per_probe:.4f} "
            f"| {b.cpu_ms_per_probe / o.cpu_ms_per_probe:.2f}x |"
        )
    lines.append("")
    lines.append("per SYN attempt (ours: a filtered probe is --attempts attempts; blackbox: one per probe):")
    for mix in MIXES:
        o, b = ours[mix], bb[mix]
        per_attempt = o.cpu_ms_per_probe / o.attempts_per_probe
        lines.append(
            f"  {mix}: ours {per_attempt:.4f} ms/attempt, blackbox {b.cpu_ms_per_probe:.4f} "
            f"ms/attempt, ratio {b.cpu_ms_per_probe / per_attempt:.2f}x"
        )
    lines.append("")
    lines.append("ours, CPU ms per probe by thread (where the remaining cost is):")
    for mix in MIXES:
        o = ours[mix]
        split = sorted(o.threads.items(), key=lambda item: -item[1])
        lines.append(
            f"  {mix}: "
            + ", ".join(f"{name} {spent / o.probes * 1000:.4f}" for name, spent in split if o.probes)
        )
    lines.append("")
    for mix in MIXES:
        o, b = ours[mix], bb[mix]
        lines.append(
            f"  {mix}: ours {o.probes} probes in {o.seconds:.1f}s, states {o.states}; blackbox {b.probes} "
            f"probes in {b.seconds:.1f}s over {b.concurrency} connections, {b.states}, "
            f"driver CPU {b.client_cpu:.1f}s (not counted)"
        )
        for run in bb_runs.get(mix, []):
            lines.append(
                f"    blackbox {mix} with {run.concurrency} connections: {run.rate:.0f} probes/s, "
                f"CPU {run.utilisation * 100:.0f}%, {run.cpu_ms_per_probe:.4f} ms/probe"
            )
    return "\n".join(lines)


def run_blackbox(
    config: Path,
    mix: str,
    targets: list[tuple[str, int]],
    connections: int,
    work: Path,
    args: argparse.Namespace,
) -> Side:
    """A fresh blackbox process, saturated over `connections` keep-alive connections for one window."""
    cmd = [
        BLACKBOX,
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{BB_PORT}",
        "--log.level=warn",
        f"--history.limit={args.bb_history_limit}",
    ]
    with Process(f"blackbox-{mix}-{connections}", cmd, work) as proc:
        wait_http(BB_PORT, "/-/healthy", 30.0)
        print(
            f"blackbox {mix}: {connections} connections, measuring {args.bb_window:g}s ...",
            file=sys.stderr,
            flush=True,
        )
        warmup = args.timeout + 2.0 if mix == "filtered" else 2.0
        loop = new_loop()
        try:
            side, _ = loop.run_until_complete(
                drive_blackbox(proc.pid, BB_PORT, targets, connections, warmup, args.bb_window)
            )
        finally:
            loop.close()
    return side


def inner(args: argparse.Namespace) -> int:
    assert_inside(NS)
    started_env = environment()
    bb_runs: dict[str, list[Side]] = {}
    with Workdir("efxbench-tcp") as work:
        inventories: dict[str, Path] = {}
        endpoints: dict[str, list[tuple[str, int]]] = {}
        for mix, prefix in MIXES.items():
            data = inventory_data([(prefix, args.paths)])
            inventories[mix] = work / f"inventory-{mix}.yaml"
            write_inventory(inventories[mix], data)
            endpoints[mix] = planned_endpoints(data)
        budget = args.interval + args.window + 8 * (args.bb_window + 15) + 120
        with start_listeners(endpoints["open"], work, budget):
            # each mix twice in the same window: as shipped (the locator on) and with --locate.max-hops 0
            # (the locator off), to show what locating blocked paths adds to the probing cost
            variants: dict[str, tuple[str, tuple[str, ...]]] = {mix: (mix, ()) for mix in MIXES}
            if not args.no_locator_compare:
                variants |= {f"{mix}/no-locator": (mix, ("--locate.max-hops", "0")) for mix in MIXES}
            ports = {name: OUR_PORT + i for i, name in enumerate(variants)}
            procs = {
                name: Process(
                    f"serve-{name.replace('/', '-')}",
                    serve_cmd(
                        inventories[mix],
                        ports[name],
                        interval=args.interval,
                        timeout=args.timeout,
                        attempts=args.attempts,
                        extra=extra,
                    ),
                    work,
                )
                for name, (mix, extra) in variants.items()
            }
            try:
                print(
                    f"ours: {len(procs)} serve processes x {args.paths} paths, warming up "
                    f"{args.interval + 2:g}s, measuring {args.window:g}s ...",
                    file=sys.stderr,
                    flush=True,
                )
                measured = measure_ours(procs, ports, args.interval + 2, args.window, args.attempts)
            finally:
                for proc in procs.values():
                    proc.stop()
            ours = {mix: measured[mix] for mix in MIXES}
            unlocated = {
                mix: measured[f"{mix}/no-locator"] for mix in MIXES if f"{mix}/no-locator" in measured
            }
            config = blackbox_config(work, args.timeout)
            bb: dict[str, Side] = {}
            for mix in MIXES:
                levels = (
                    [args.bb_filtered_connections]
                    if mix == "filtered"
                    else [int(c) for c in args.bb_connections.split(",")]
                )
                runs = [run_blackbox(config, mix, endpoints[mix], c, work, args) for c in levels]
                bb[mix] = min(runs, key=lambda side: side.cpu_ms_per_probe)  # its cheapest case
                bb_runs[mix] = runs
    text = report(ours, bb, bb_runs, args)
    if unlocated:
        text += (
            "\n\nthe locator's cost (same window; every path of the refused and filtered mixes is blocked):\n"
        )
        text += "| mix | CPU ms/probe, locator on | locator off | on/off | located (start -> end) |\n"
        text += "| --- | ---: | ---: | ---: | ---: |\n"
        for mix, off in unlocated.items():
            on = ours[mix]
            text += (
                f"| {mix} | {on.cpu_ms_per_probe:.4f} | {off.cpu_ms_per_probe:.4f} "
                f"| {on.cpu_ms_per_probe / off.cpu_ms_per_probe:.2f}x "
                f"| {on.located[0]} -> {on.located[1]} |\n"
            )
    print(f"at start: {started_env}\nat end:   {environment()}\n")
    print(text)
    if args.json:
        result = {
            "settings": vars(args),
            "ours": {mix: asdict(s) | {"cpu_ms_per_probe": s.cpu_ms_per_probe} for mix, s in ours.items()},
            "blackbox": {mix: asdict(s) | {"cpu_ms_per_probe": s.cpu_ms_per_probe} for mix, s in bb.items()},
            "ours_without_locator": {
                mix: asdict(s) | {"cpu_ms_per_probe": s.cpu_ms_per_probe} for mix, s in unlocated.items()
            },
            "blackbox_runs": {
                mix: [asdict(s) | {"cpu_ms_per_probe": s.cpu_ms_per_probe} for s in runs]
                for mix, runs in bb_runs.items()
            },
        }
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if _check_mix(ours, bb) else 1


def _check_mix(ours: dict[str, Side], bb: dict[str, Side]) -> bool:
    """False (with a warning) when a mix did not produce what it claims (e.g. listeners missing)."""
    ok = True
    expect: dict[str, Callable[[Side], bool]] = {
        "open": lambda s: s.states.get("open", 0) >= 0.99 * s.probes,
        "refused": lambda s: s.states.get("refused", 0) >= 0.99 * s.probes,
        "filtered": lambda s: s.states.get("filtered", 0) >= 0.99 * s.probes,
    }
    for mix, good in expect.items():
        if not good(ours[mix]):
            print(f"WARNING: ours/{mix} states were {ours[mix].states}", file=sys.stderr)
            ok = False
        want_success = mix == "open"
        share = bb[mix].states["success"] / bb[mix].probes if bb[mix].probes else 0.0
        if (share < 0.99) if want_success else (share > 0.01):
            print(f"WARNING: blackbox/{mix} success share was {share:.3f}", file=sys.stderr)
            ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.tcp_vs_blackbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--paths", type=int, default=6000, help="paths per mix for our service")
    parser.add_argument(
        "--interval", type=float, default=20.0
    )  # 6,000 paths: 300 probes/s, the rate the goal names
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0, help="our measurement window, seconds")
    parser.add_argument("--bb-window", type=float, default=15.0, help="blackbox window per mix, seconds")
    parser.add_argument(
        "--bb-connections",
        default="16,128",
        help="concurrent /probe requests for open and refused: one run per value, the "
        "cheapest per probe is reported",
    )
    parser.add_argument(
        "--bb-filtered-connections",
        type=int,
        default=6000,
        help="concurrent /probe requests for filtered (each holds a socket for --timeout)",
    )
    parser.add_argument("--bb-history-limit", type=int, default=100, help="blackbox --history.limit")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--no-locator-compare",
        action="store_true",
        help="skip the second set of serve processes with the locator off",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inner(args)
    if args.json:  # the inner half runs from the repository root
        argv = [*argv, "--json", os.path.abspath(args.json)]
    with Netns(NS, filtered_rules([f"{MIXES['filtered']}.0.0/16"])) as ns:
        return ns.run_module("bench.tcp_vs_blackbox", [*argv, "--inside"], timeout=900)


if __name__ == "__main__":
    sys.exit(main())
