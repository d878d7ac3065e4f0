from __future__ import annotations

import os
import sys

import pytest

from agent.telemetry.process_stats import ProcessStats

psutil = pytest.importorskip("psutil")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rss_is_what_psutil_reports() -> None:
    stats = ProcessStats()

    rss_mb, _ = stats.sample()
    expected_mb = psutil.Process().memory_info().rss / 1e6

    assert rss_mb is not None and rss_mb == pytest.approx(expected_mb, abs=1.0)


def test_cpu_percent_is_cpu_seconds_over_wall_seconds() -> None:
    wall = [100.0]
    stats = ProcessStats(clock=lambda: wall[0])
    cpu_before = sum(os.times()[:2])
    while sum(os.times()[:2]) - cpu_before < 0.05:  # burn at least 50 ms of CPU
        pass
    cpu_used_s = sum(os.times()[:2]) - cpu_before
    wall[0] += 0.5

    _, percent = stats.sample()

    # The fake clock says 0.5 s passed; the CPU spent is real (plus a little before/after).
    assert percent is not None and percent == pytest.approx(100 * cpu_used_s / 0.5, abs=5.0)


def test_without_proc_it_falls_back_to_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.telemetry.process_stats._STATM", "/nonexistent/statm")
    stats = ProcessStats()

    rss_mb, percent = stats.sample()

    assert rss_mb == pytest.approx(psutil.Process().memory_info().rss / 1e6, abs=1.0)
    assert percent is not None and percent >= 0
