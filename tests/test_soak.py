"""A short soak (the long one is bench/soak.py): 200 targets, random firewall changes for two and a half
minutes. Every change detected, zero false pages, RSS flat, lag bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.netns import RoutedLab
from tests.lab.soak import soak

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[1]
INTERVAL = 5.0


def test_random_firewall_changes_are_all_detected_with_no_false_pages(
    routed_lab: RoutedLab, tmp_path: Path
) -> None:
    routed_lab.flush()
    report = soak(routed_lab, tmp_path, targets=200, seconds=150, interval=INTERVAL, seed=2026)
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "soak.txt").write_text(report.summary() + "\n")
    print("\n" + report.summary())
    assert len(report.changes) >= 10
    assert report.missed == []
    assert report.false_pages == []
    assert report.detected == len(report.changes)
    assert report.rss_end_kib < report.rss_start_kib * 1.3  # flat, give or take the allocator
    assert report.lag_max < INTERVAL
