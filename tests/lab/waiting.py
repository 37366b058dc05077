"""Polling until something is true: the one wait loop the tests share.

    wait_until(lambda: svc.get("/-/ready").status_code == 200)
    rows = wait_until(lambda: prom.query(expr)["data"]["result"], timeout=60, interval=0.5)

The predicate's first truthy answer is returned, so a wait can hand back what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 40.0,
    interval: float = 0.2,
    *,
    message: str | Callable[[], object] = "condition not met in time",
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that; fail
    the test (AssertionError with `message`, called if it is a function) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 right now (a refused or reset connection is a no, not an error)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.TransportError:
        return False
