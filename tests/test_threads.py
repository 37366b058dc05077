"""The service's threads carry OS-visible names (what `top -H`, `ps -L` and /proc show)."""

from __future__ import annotations

import threading
from pathlib import Path

from exporter.engine.prober import Prober, ProbeSettings
from exporter.inventory.model import Inventory
from exporter.outputs import exposition
from exporter.state.recorder import Recorder
from exporter.threads import name_this_thread


def os_name(native_id: int | None = None) -> str:
    return Path(f"/proc/self/task/{native_id or threading.get_native_id()}/comm").read_text().strip()


def test_a_thread_gets_its_name_at_the_os_level_cut_to_fifteen_bytes() -> None:
    seen: list[str] = []

    def run() -> None:
        name_this_thread("ef-a-name-longer-than-fifteen")
        seen.append(os_name())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == ["ef-a-name-longe"]


def test_the_prober_and_the_compressors_are_named() -> None:
    prober = Prober(Inventory("o"), [], ProbeSettings(interval=60.0), source="me", sink=Recorder())
    prober.start()
    try:
        assert prober._thread is not None
        assert os_name(prober._thread.native_id) == "ef-prober"
    finally:
        prober.stop()
    assert exposition._compressors().submit(os_name).result(timeout=10) == "ef-gzip"
