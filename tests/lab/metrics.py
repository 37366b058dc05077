"""Reading a running service's /metrics: parsed families, samples by labels, and promtool's lint.

value(svc, "exchange_path_blocked", target="ex1.lab.test", port="2525")  # 1.0, 0.0 or None
"""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.service import Service


def metric_families(text: str) -> dict[str, Metric]:
    """An exposition's families by name (a counter's family name has no _total)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(svc: Service, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in one scrape, keyed by its sorted labels."""
    out = {}
    for family in text_string_to_metric_families(svc.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = float(sample.value)
    return out


def value(svc: Service, name: str, **labels: str) -> float | None:
    """The first sample called `name` whose labels include `labels`, in one scrape; None if there is none."""
    for key, number in samples(svc, name).items():
        if all(dict(key).get(k) == v for k, v in labels.items()):
            return number
    return None


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        raise RuntimeError("promtool is missing: `make test` installs Debian's prometheus package")
    return tool


def promtool_check_metrics(text: str) -> None:
    """`promtool check metrics` on an exposition; fails the test with what promtool said."""
    lint = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    if lint.returncode != 0:
        raise AssertionError(lint.stdout + lint.stderr)
