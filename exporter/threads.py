"""OS-visible names for the service's threads, so `top -H`, `ps -L` and /proc/<pid>/task/*/comm tell the
prober from the HTTP server, the flusher and the compressors (Python 3.11 names its threads only for
itself). Linux only (prctl PR_SET_NAME, 15 bytes); elsewhere a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # no libc to load (a static build): names stay Python's own
        _libc = None


def name_this_thread(name: str | None = None) -> None:
    """Give the calling thread `name` (default: its Python name) at the OS level; never raises."""
    if _libc is None:
        return
    text = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    try:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(text), 0, 0, 0)
    except (AttributeError, OSError):
        return
