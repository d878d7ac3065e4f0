"""Verdicts, evidence, calibration and confirmation of the monitor's pure core."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.errors import ConfigError
from server.monitoring.detector import (
    CohortState,
    MonitorPolicy,
    Reference,
    confirm,
    score_windows,
)
from server.monitoring.thresholds import CalibrationCache, n_bucket
from tests.server.monitoring.synthetic import F, make_fleet

pytestmark = pytest.mark.monitor

N = 512


@pytest.mark.parametrize(
    ("scenario", "kwargs", "n", "verdict", "features"),
    [
        ("none", {}, N, "ok", set()),
        ("tiny shift", {"shift": 0.02}, N, "ok", set()),
        ("moderate covariate shift", {"shift": 0.15}, N, "drift", 1),
        ("large covariate shift", {"shift": 0.5}, N, "drift", F // 2),
        ("out-of-range sensor", {"out_of_range": 0.05, "features": slice(3, 4)}, N, "drift", {3}),
        ("prior shift", {"classes": np.array([0.55, 0.15, 0.15, 0.15])}, N, "drift", set()),
        ("tiny window", {"shift": 0.5}, 40, "inconclusive", set()),
    ],
)
def test_scenario_table_gives_the_expected_verdict_and_evidence(
    scenario: str, kwargs: dict, n: int, verdict: str, features: set[int] | int
) -> None:
    fleet = make_fleet(seed=1)
    window = fleet.window("fleet", n, **kwargs)
    null = fleet.null(max(n, 1))

    [score] = score_windows([(window, fleet.reference, null)], MonitorPolicy())

    assert score.verdict == verdict, scenario
    if isinstance(features, set):
        assert set(score.drifted_features) == features, scenario
    else:
        assert len(score.drifted_features) >= features, scenario
    if scenario == "prior shift":
        assert score.prior_adjusted_p is not None and score.prior_adjusted_p <= 1e-3


def test_one_cohort_only_drifts_and_its_event_names_its_top_features() -> None:
    fleet = make_fleet(seed=2)
    null = fleet.null(N)
    policy = MonitorPolicy()
    windows = [
        fleet.window("r/default", N),
        fleet.window("r/east", N, shift=0.6, features=slice(0, 4)),
        fleet.window("r/west", N),
    ]

    scores = score_windows([(w, fleet.reference, null) for w in windows], policy)
    events = [confirm(CohortState(), s, fleet.reference, policy, "w1")[1] for s in scores]

    assert [s.verdict for s in scores] == ["ok", "drift", "ok"]
    assert events[0] == [] and events[2] == []
    [event] = events[1]
    assert event.kind == "drift_detected" and event.cohort == "r/east"
    assert set(event.evidence["features"]) == {0, 1, 2, 3}
    assert set(event.evidence["scores"]) >= {"psi", "wasserstein", "ks", "js", "hellinger"}
    assert all(
        s > t for s, t in zip(event.evidence["scores"]["psi"], event.evidence["thresholds"]["psi"], strict=True)
    ) or event.evidence["adjusted_p"][0] <= 1e-3
    assert event.evidence["windows"] == ["w1"]


@pytest.mark.parametrize("rate", [1e-3, 0.05])
def test_false_alarms_over_1000_no_drift_windows_stay_at_the_configured_rate(rate: float) -> None:
    fleet = make_fleet(seed=3)
    null = fleet.null(N)
    policy = MonitorPolicy(false_alarm_rate=rate)

    alarms = sum(
        score_windows([(fleet.window("c", N), fleet.reference, null)], policy)[0].verdict == "drift"
        for _ in range(1000)
    )

    tolerance = 3 * np.sqrt(1000 * rate * (1 - rate)) + 2
    assert alarms <= 1000 * rate + tolerance
    if rate >= 0.05:  # calibrated, not merely conservative: same order as the target
        assert alarms >= 1000 * rate / 10


def test_confirmation_needs_evidence_and_recovery_needs_clean_windows() -> None:
    fleet = make_fleet(seed=4)
    null = fleet.null(N)
    policy = MonitorPolicy(recover_windows=2)
    state = CohortState()
    kinds: list[str] = []
    plan = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
    for i, shift in enumerate(plan):
        [score] = score_windows([(fleet.window("c", N, shift=shift), fleet.reference, null)], policy)
        state, events = confirm(state, score, fleet.reference, policy, f"w{i}")
        kinds += [e.kind for e in events]

    assert kinds == ["drift_detected", "recovered"]
    assert not state.drift_alarmed


def test_inconclusive_windows_leave_the_state_alone() -> None:
    fleet = make_fleet(seed=5)
    policy = MonitorPolicy()
    [score] = score_windows([(fleet.window("c", 10, shift=0.9), fleet.reference, None)], policy)
    state = CohortState(cusum=0.5, drift_alarmed=True)

    assert score.verdict == "inconclusive"
    assert confirm(state, score, fleet.reference, policy, "w") == (state, [])


def test_quality_drop_fires_on_estimated_accuracy_and_recovers() -> None:
    fleet = make_fleet(seed=6)
    calibration = np.tile(np.linspace(0.1, 0.99, 10), (4, 1))
    ref = Reference(**{**fleet.reference.__dict__, "calibration": calibration, "accuracy": 0.9})
    policy = MonitorPolicy(recover_windows=1)
    high = np.zeros((4, 10), dtype=np.int64)
    high[:, 9] = 128
    low = np.zeros((4, 10), dtype=np.int64)
    low[:, 5] = 128
    state, kinds = CohortState(), []
    for i, counts in enumerate([high, low, high]):
        base = fleet.window("c", N)
        window = base.__class__(**{**base.__dict__, "class_confidence": counts})
        [score] = score_windows([(window, ref, fleet.null(N))], policy)
        state, events = confirm(state, score, ref, policy, f"w{i}")
        kinds += [e.kind for e in events]

    assert kinds == ["quality_dropped", "recovered"]


def test_bad_policy_and_shapes_are_refused_with_a_clear_error() -> None:
    fleet = make_fleet(seed=7)
    with pytest.raises(ConfigError, match="false_alarm_rate"):
        MonitorPolicy(false_alarm_rate=0)
    with pytest.raises(ConfigError, match="decision_statistics"):
        MonitorPolicy(decision_statistics=("nope",))
    window = fleet.window("c", N)
    bad = window.__class__(**{**window.__dict__, "feature_histograms": window.feature_histograms[:, 1:]})
    with pytest.raises(ValueError, match="do not match"):
        score_windows([(bad, fleet.reference, fleet.null(N))], MonitorPolicy())
    with pytest.raises(ValueError, match="at least 1"):
        n_bucket(0)


def test_calibrations_are_cached_per_release_and_bucket() -> None:
    fleet = make_fleet(seed=8)
    cache = CalibrationCache(draws=50)
    ref = fleet.reference
    a = cache.get(ref.key, ref.feature_histograms, ref.bin_edges, 600)
    b = cache.get(ref.key, ref.feature_histograms, ref.bin_edges, 1000)

    assert a is b and a.n == 512
