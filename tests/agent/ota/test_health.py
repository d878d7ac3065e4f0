"""The pure health judge and the sampler."""

from __future__ import annotations

import numpy as np
import pytest

from agent.ota.health import HealthSampler, HealthStats, judge, resolve_policy
from edgeops.schemas import HealthPolicy

pytestmark = [pytest.mark.ota]

POLICY = HealthPolicy(window_s=10, min_samples=5)
BASE = HealthStats(calls=100, errors=1, p95_latency_ms=2.0, mean_confidence=0.9)


@pytest.mark.parametrize(
    ("window", "elapsed", "decision", "needle"),
    [
        (HealthStats(100, 1, 2.1, 0.88), 5.0, "wait", None),
        (HealthStats(2, 0, 2.0, 0.9), 12.0, "wait", None),  # not enough samples yet
        (HealthStats(2, 0, 2.0, 0.9), 51.0, "healthy", "only 2 of 5"),  # deadline passed
        (HealthStats(0, 0, None, None), 51.0, "healthy", "no traffic"),
        (HealthStats(100, 1, 2.1, 0.88), 10.0, "healthy", None),
        (HealthStats(100, 20, 2.1, 0.88), 10.0, "regressed", "error rate"),
        (HealthStats(100, 1, 40.0, 0.88), 10.0, "regressed", "p95 latency"),
        (HealthStats(100, 1, 2.1, 0.5), 10.0, "regressed", "mean confidence"),
    ],
)
def test_judge(window: HealthStats, elapsed: float, decision: str, needle: str | None) -> None:
    verdict = judge(BASE, window, POLICY, elapsed)
    assert verdict.decision == decision
    if needle:
        assert needle in (verdict.reason or "")


def test_sampler_statistics_and_overrides() -> None:
    sampler = HealthSampler()
    for i in range(20):
        sampler.record(i / 1000, np.array([[0.8, 0.2], [0.6, 0.4]]))
    sampler.record_error()
    stats = sampler.stats()
    assert (stats.calls, stats.errors) == (21, 1)
    assert stats.mean_confidence == pytest.approx(0.7)
    assert stats.p95_latency_ms == pytest.approx(18.0)
    policy = resolve_policy(HealthPolicy(window_s=60, min_samples=50), window_s=1, min_samples=0)
    assert (policy.window_s, policy.min_samples) == (1, 0)
