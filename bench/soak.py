"""The long soak: `python -m bench.soak --minutes 60` (root; builds its own network namespaces).

200 targets behind an nftables router, random scripted firewall changes (drop, TCP reset, ICMP
admin-prohibited) for the whole run; prints every change detected or missed, false pages, RSS at start and
end, and the largest probe lag. The 3-minute version runs in CI as tests/test_soak.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tests.lab.netns import RoutedLab
from tests.lab.soak import soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    lab = RoutedLab(tag=f"s{os.getpid() % 10000}", net=249).up()  # beside the test suite's 10.251 lab
    try:
        with tempfile.TemporaryDirectory() as work:
            report = soak(
                lab,
                Path(work),
                targets=args.targets,
                seconds=args.minutes * 60,
                interval=args.interval,
                seed=args.seed,
            )
    finally:
        lab.down()
    print(report.summary())
    for line in report.missed + report.false_pages:
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0 if not report.missed and not report.false_pages else 1


if __name__ == "__main__":
    sys.exit(main())
