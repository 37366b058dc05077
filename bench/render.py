"""In-process exposition rendering at scale: `python -m bench.render [--paths 100000]`.

Times PathExposition.render_gzip (what a Prometheus scrape gets) cold and then after every path was
re-probed (the worst case for the per-probe timestamp lines), and the plain rendering as a scrape
streams it.
"""

from __future__ import annotations

import argparse
import sys
import time

from exporter.outputs.exposition import PathExposition
from exporter.plan.catalogue import PathKind
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.recorder import Recorder
from exporter.state.tracker import Tracker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.paths
    paths = [
        NetworkPath(
            "monitor.contoso.example",
            "HQ",
            f"ex{i // 14:05d}.contoso.example",
            f"Site-{i % 40:02d}",
            "mailbox",
            25 + i % 14,
            "tcp",
            "smtp-transport",
            PathKind.EXCHANGE_EXCHANGE,
            "tcp",
        )
        for i in range(n)
    ]
    exposition = PathExposition()
    recorder = Recorder(Tracker(), [exposition])
    recorder.begin_plan(paths)
    for i in range(n):
        recorder.record(i, Outcome(State.OPEN, 0.001, ""), 1.7e9)
    for round_ in range(args.rounds):
        started = time.perf_counter()
        body = exposition.render_gzip(b"# head\n")
        took = time.perf_counter() - started
        print(
            f"gzip scrape {round_} ({'cold' if round_ == 0 else 'every path re-probed'}): "
            f"{took * 1000:.0f} ms, {len(body) / 1e6:.1f} MB"
        )
        for i in range(n):
            recorder.record(i, Outcome(State.OPEN, 0.001 + round_ * 1e-4, ""), 1.7e9 + round_ + 1)
    started = time.perf_counter()
    size = sum(len(piece) for piece in exposition.render_blocks())  # what a plain scrape streams
    took = time.perf_counter() - started
    print(f"plain, streamed block by block: {took * 1000:.0f} ms, {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
