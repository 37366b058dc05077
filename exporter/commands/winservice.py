"""The pywin32 glue: the exporter hosted by the Windows service control manager. Windows only.

The SCM starts `exchange-firewall-exporter.exe service run <serve flags>`; this registers the service
class with the SCM dispatcher, runs `serve` with those flags on the service's thread, and turns the SCM's
stop request into the same graceful stop as Ctrl+C on a console (probing stops, the baseline is flushed).
Not run on Windows in this project's CI (see the README): everything around it is tested on Linux.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _service_class(name: str, display_name: str) -> type:
    import servicemanager  # type: ignore[import-not-found,import-untyped,unused-ignore]
    import win32service  # type: ignore[import-not-found,import-untyped,unused-ignore]
    import win32serviceutil  # type: ignore[import-not-found,import-untyped,unused-ignore]

    class ExporterService(win32serviceutil.ServiceFramework):  # type: ignore[misc,unused-ignore]
        _svc_name_ = name
        _svc_display_name_ = display_name

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._stop: Callable[[], None] | None = None
            self._stop_requested = False

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            self._stop_requested = True
            if self._stop is not None:
                self._stop()

        def SvcDoRun(self) -> None:
            from exporter import logsetup
            from exporter.commands.serve import run_serve
            from exporter.flags import build_parser
            from exporter.settings import from_args

            args = build_parser().parse_args(["serve", *_serve_flags(sys.argv)])
            logsetup.setup(args.log_level, args.log_file, args.log_format)
            servicemanager.LogInfoMsg(f"{name}: starting")

            def keep(stop: Callable[[], None]) -> None:
                self._stop = stop
                if self._stop_requested:
                    stop()

            run_serve(from_args(args), on_stop=keep)

    return ExporterService


def _serve_flags(argv: list[str]) -> list[str]:
    """The flags after `service run` in the service's command line."""
    for index in range(len(argv) - 1):
        if argv[index] == "service" and argv[index + 1] == "run":
            return argv[index + 2 :]
    return []


def run_under_scm(name: str, display_name: str) -> int:
    """Host the service `name` for the SCM until it is stopped."""
    import servicemanager  # type: ignore[import-not-found,import-untyped,unused-ignore]

    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(_service_class(name, display_name))
    servicemanager.StartServiceCtrlDispatcher()
    return 0
