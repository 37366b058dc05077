"""`python -m bench._gcwrap LOG serve ...`: the exporter's own command line, with every garbage collection
longer than 20 ms written to LOG (`unix-time generation milliseconds`): where a stall of the probing loop
comes from the collector rather than from a scrape."""

from __future__ import annotations

import gc
import sys
import time
from typing import Any


def main() -> int:
    log = open(sys.argv[1], "w", buffering=1)  # noqa: SIM115 - open for the process's whole life
    started: list[float] = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms > 20:
            log.write(f"{time.time():.1f} {info['generation']} {ms:.0f}\n")

    gc.callbacks.append(timed)
    from exporter.cli import main as exporter_main

    return exporter_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
