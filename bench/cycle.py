"""A 20k-path cycle with half the paths filtered: does every path get probed once per 60 s interval, with
`exchange_probe_lag_seconds` under 5 s?

Inside network namespace `efxbench-cycle` (created here, deleted at the end): a quarter of the paths open
(real listeners on 127.1.0.0/16), a quarter refused (127.2.0.0/16, nothing listening), half filtered
(127.3.0.0/16, an nftables rule drops every TCP segment, so each such probe takes --attempts x --timeout
= 6 s). The real `python -m exporter serve --interval 60 --timeout 2` runs for two intervals plus the
longest probe; its /metrics is read every --poll seconds (lag, in flight, probes by result, cycles) and
its /proc entry gives fds, RSS and CPU. At the end every path's `exchange_path_last_probe_timestamp_seconds`
must be younger than interval + attempts x timeout + 5 s: every path was probed in the last cycle.

    .venv/bin/python -m bench.cycle [--paths 20000] [--interval 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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
    fd_count,
    filtered_rules,
    http_get,
    inventory_data,
    memory_kib,
    planned_endpoints,
    samples,
    serve_cmd,
    start_listeners,
    write_inventory,
)

NS = "efxbench-cycle"
PORT = 19400
LAG_GOAL = 5.0
OPEN, REFUSED, FILTERED = "127.1", "127.2", "127.3"


@dataclass
class Poll:
    t: float  # seconds since the process started
    lag: float
    in_flight: float
    probes: dict[str, float]
    cycles: float
    ready: float
    fds: int
    rss_kib: int
    cpu: float
    scrape_s: float


@dataclass
class CycleResult:
    paths: int
    groups: dict[str, int]
    interval: float
    timeout: float
    attempts: int
    concurrency_limit: float = 0.0
    ready_s: float | None = None  # process start -> /-/ready
    healthy_s: float | None = None
    polls: list[Poll] = field(default_factory=list)
    final_ages: dict[str, float] = field(default_factory=dict)  # max / median last-probe age at the end
    unprobed: int = 0
    final_states: dict[str, int] = field(default_factory=dict)

    @property
    def max_lag(self) -> float:
        return max((p.lag for p in self.polls), default=float("nan"))


def poll(port: int, pid: int, started: float) -> tuple[Poll, str]:
    t0 = time.monotonic()
    response = http_get(port, "/metrics", gzip_ok=True, timeout=60.0)
    scrape_s = time.monotonic() - t0
    text = response.body.decode()
    values: dict[str, float] = {}
    probes: dict[str, float] = {}
    for name, labels, value in samples(text, stop_at="# HELP exchange_path_"):
        if name == "exchange_probes_total":
            probes[labels.split('"')[1]] = value
        else:
            values[name] = value
    return Poll(
        t=time.monotonic() - started,
        lag=values.get("exchange_probe_lag_seconds", float("nan")),
        in_flight=values.get("exchange_probes_in_flight", float("nan")),
        probes=probes,
        cycles=values.get("exchange_probe_cycles_total", float("nan")),
        ready=values.get("exchange_exporter_ready", float("nan")),
        fds=fd_count(pid),
        rss_kib=memory_kib(pid)["VmRSS"],
        cpu=cpu_seconds(pid),
        scrape_s=scrape_s,
    ), text


def inner(args: argparse.Namespace) -> int:
    assert_inside(NS)
    started_env = environment()
    quarter = args.paths // 4
    groups = {"open": quarter, "refused": quarter, "filtered": args.paths - 2 * quarter}
    prefixes = {"open": OPEN, "refused": REFUSED, "filtered": FILTERED}
    result = CycleResult(args.paths, groups, args.interval, args.timeout, args.attempts)
    run_for = 2 * args.interval + args.attempts * args.timeout + 5.0
    with Workdir("efxbench-cycle") as work:
        data = inventory_data([(prefixes[g], n) for g, n in groups.items()])
        inventory = work / "inventory.yaml"
        write_inventory(inventory, data)
        endpoints = planned_endpoints(data)
        open_endpoints = [(h, p) for h, p in endpoints if h.startswith(OPEN + ".")]
        with start_listeners(open_endpoints, work, run_for + 120.0):
            cmd = serve_cmd(
                inventory, PORT, interval=args.interval, timeout=args.timeout, attempts=args.attempts
            )
            started = time.monotonic()
            with Process("serve", cmd, work) as proc:
                print(
                    f"cycle: {args.paths} paths ({groups}), running {run_for:g}s ...",
                    file=sys.stderr,
                    flush=True,
                )
                text = ""
                next_poll = started
                while time.monotonic() - started < run_for:
                    if not proc.alive():
                        raise RuntimeError(f"serve exited:\n{proc.tail()}")
                    now = time.monotonic()
                    if result.ready_s is None:
                        try:
                            status = http_get(PORT, "/-/ready", timeout=5.0).status
                            if result.healthy_s is None:
                                result.healthy_s = now - started
                            if status == 200:
                                result.ready_s = now - started
                        except OSError:
                            pass
                    if now >= next_poll and result.healthy_s is not None:
                        sample, text = poll(PORT, proc.pid, started)
                        result.polls.append(sample)
                        next_poll = now + args.poll
                        if result.concurrency_limit == 0.0:
                            for name, _labels, value in samples(text, stop_at="# HELP exchange_path_"):
                                if name == "exchange_probe_concurrency_limit":
                                    result.concurrency_limit = value
                    time.sleep(max(0.0, min(1.0, started + run_for - time.monotonic())))
                sample, text = poll(PORT, proc.pid, started)
                result.polls.append(sample)
                wall = time.time()
    ages: list[float] = []
    states: dict[str, int] = {}
    for name, labels, value in samples(text):
        if name == "exchange_path_last_probe_timestamp_seconds":
            ages.append(wall - value)
        elif name == "exchange_path_state" and value == 1.0:
            state = labels.rpartition('state="')[2].rstrip('"')
            states[state] = states.get(state, 0) + 1
    ages.sort()
    result.unprobed = args.paths - len(ages)
    result.final_states = states
    if ages:
        result.final_ages = {"max": ages[-1], "median": ages[len(ages) // 2]}
    text_out = report(result, args)
    print(f"at start: {started_env}\nat end:   {environment()}\n")
    print(text_out)
    if args.json:
        out = asdict(result) | {"max_lag": result.max_lag}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def report(r: CycleResult, args: argparse.Namespace) -> str:
    age_limit = r.interval + r.attempts * r.timeout + LAG_GOAL
    steady = [p for p in r.polls if p.t >= r.interval]  # the second cycle
    first, last = (steady[0], steady[-1]) if len(steady) >= 2 else (r.polls[0], r.polls[-1])
    span = last.t - first.t
    probes = {k: last.probes.get(k, 0.0) - first.probes.get(k, 0.0) for k in last.probes}
    total = sum(probes.values())
    cpu = (last.cpu - first.cpu) / span if span else float("nan")
    ok_lag = r.max_lag < LAG_GOAL
    ok_ready = (
        r.ready_s is not None
        and r.healthy_s is not None
        and (
            r.ready_s - r.healthy_s <= r.interval + r.attempts * r.timeout + 1.0  # 1 s: our /-/ready polling
        )
    )
    ok_ages = r.unprobed == 0 and r.final_ages.get("max", float("inf")) <= age_limit
    lines = [
        f"{r.paths} paths ({', '.join(f'{k} {v}' for k, v in r.groups.items())}), --interval {r.interval:g} "
        f"--timeout {r.timeout:g} --attempts {r.attempts}, {len(r.polls)} polls of /metrics "
        f"every {args.poll:g}s",
        "",
        "| measure | value | goal |",
        "| --- | ---: | --- |",
        f"| exchange_probe_lag_seconds, max over the run | {r.max_lag:.3f} s | < {LAG_GOAL:g} s: "
        f"{'met' if ok_lag else 'MISSED'} |",
        f"| lag, median of polls | {sorted(p.lag for p in r.polls)[len(r.polls) // 2]:.3f} s | |",
        f"| every path probed once (/-/ready) after | {_since(r.ready_s, r.healthy_s)} "
        f"| <= {r.interval + r.attempts * r.timeout:g} s (interval + {r.attempts}x{r.timeout:g} s): "
        f"{'met' if ok_ready else 'MISSED'} |",
        f"| oldest last-probe timestamp at the end | {r.final_ages.get('max', float('nan')):.1f} s "
        f"(median {r.final_ages.get('median', float('nan')):.1f} s), {r.unprobed} paths never probed "
        f"| <= {age_limit:g} s: {'met' if ok_ages else 'MISSED'} |",
        f"| cycles completed (exchange_probe_cycles_total) | {last.cycles:.0f} | |",
        f"| probes/s in the second cycle | {total / span if span else float('nan'):.0f} "
        f"({', '.join(f'{k} {v / span:.0f}' for k, v in sorted(probes.items()) if v)}) "
        f"| {r.paths / r.interval:.0f} |",
        f"| in flight, max of polls | {max(p.in_flight for p in r.polls):.0f} "
        f"(limit {r.concurrency_limit:.0f}) | |",
        f"| open fds, max of polls | {max(p.fds for p in r.polls)} (ulimit -n {_nofile()}) | |",
        f"| process CPU in the second cycle | {cpu * 100:.1f} % of a core | |",
        f"| RSS at the end | {last.rss_kib / 1024:.0f} MiB | |",
        f"| /metrics scrape (gzip), max / median | {max(p.scrape_s for p in r.polls) * 1000:.0f} / "
        f"{sorted(p.scrape_s for p in r.polls)[len(r.polls) // 2] * 1000:.0f} ms | |",
        f"| final path states | {r.final_states} | |",
    ]
    return "\n".join(lines)


def _since(ready: float | None, healthy: float | None) -> str:
    if ready is None or healthy is None:
        return "never"
    return f"{ready - healthy:.1f} s after it began serving ({ready:.1f} s after process start)"


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.cycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--paths", type=int, default=20000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between reads of /metrics")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inner(args)
    if args.json:
        argv = [*argv, "--json", os.path.abspath(args.json)]
    with Netns(NS, filtered_rules([f"{FILTERED}.0.0/16"])) as ns:
        return ns.run_module("bench.cycle", [*argv, "--inside"], timeout=900)


if __name__ == "__main__":
    sys.exit(main())
