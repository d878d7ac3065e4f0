"""The monitor's pure core: score cohort windows, control multiplicity, confirm, emit events.

    scores = score_windows([(window, reference, null_model), ...], policy)
    state, events = confirm(state, score, reference, policy, window_id)

`score_windows` scores every window of one time slice: each feature's decision statistics get
p-values from the calibrated null model (Bonferroni across the statistics of a feature), then
Benjamini-Hochberg runs across every feature (and the prediction prior) of every conclusive
cohort of the slice, at the target false-alarm rate. A window with fewer than `min_count`
predictions is "inconclusive", never "ok" or "drift". `confirm` runs a CUSUM over the evidence
of consecutive windows (log10 of level / adjusted p: positive only when BH rejects), raises
`drift_detected` when it crosses `cusum_threshold`, and `recovered` after `recover_windows`
clean windows (hysteresis); `quality_dropped` fires when the estimated or realised accuracy
falls more than `max_accuracy_drop` below the release's held-out accuracy, beyond the window's
sampling noise (a one-sided binomial test at the false-alarm rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.stats import false_discovery_control

from edgeops.errors import ConfigError
from server.monitoring.estimate import estimated_accuracy, naive_accuracy, realised_accuracy
from server.monitoring.statistics import FEATURE_STATISTICS, prior_shift, score_features
from server.monitoring.thresholds import NullModel

__all__ = [
    "CohortScore",
    "CohortState",
    "MonitorEvent",
    "MonitorPolicy",
    "Reference",
    "Verdict",
    "WindowInput",
    "confirm",
    "score_windows",
]

Verdict = Literal["ok", "drift", "inconclusive"]
EventKind = Literal["drift_detected", "quality_dropped", "recovered"]
_EVIDENCE_CAP = 6.0  # log10 units: one window cannot carry more than this


@dataclass(frozen=True)
class MonitorPolicy:
    """How windows become verdicts and events."""

    false_alarm_rate: float = 1e-3  # per cohort-window, under no drift
    decision_statistics: tuple[str, ...] = ("psi", "wasserstein", "out_of_range")
    min_count: int = 100
    dataset_drift_share: float = 0.0  # drift when more than this share of features drifted
    cusum_threshold: float = 1.0  # log10 units of evidence beyond the level
    recover_windows: int = 2
    max_accuracy_drop: float = 0.05
    min_feedback: int = 50
    top_features: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.false_alarm_rate < 1:
            raise ConfigError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        unknown = set(self.decision_statistics) - set(FEATURE_STATISTICS)
        if unknown or not self.decision_statistics:
            raise ConfigError(
                f"decision_statistics must be a non-empty subset of {FEATURE_STATISTICS}, "
                f"got {self.decision_statistics}"
            )
        if self.min_count < 1 or self.recover_windows < 1 or self.cusum_threshold < 0:
            raise ConfigError("min_count and recover_windows must be >= 1, cusum_threshold >= 0")
        if not 0 <= self.dataset_drift_share < 1:
            raise ConfigError(f"dataset_drift_share must be in [0, 1), got {self.dataset_drift_share}")


@dataclass(frozen=True)
class Reference:
    """What a release says a healthy window looks like (from its signed monitoring field)."""

    key: str  # release target path
    feature_histograms: NDArray[np.int64]  # (F, B+2)
    bin_edges: NDArray[np.float64]  # (B+1,)
    predicted_classes: NDArray[np.int64] | None = None
    calibration: NDArray[np.float64] | None = None  # (classes, 10)
    accuracy: float | None = None


@dataclass(frozen=True)
class WindowInput:
    """One cohort's merged sketches over one time window."""

    cohort: str
    count: int
    feature_histograms: NDArray[np.int64]  # (F, B+2)
    predicted_classes: NDArray[np.int64] | None = None
    class_confidence: NDArray[np.int64] | None = None
    confusion: NDArray[np.int64] | None = None


@dataclass(frozen=True)
class CohortScore:
    """Every score of one cohort window, drifted or not, and its verdict."""

    cohort: str
    count: int
    verdict: Verdict
    scores: Mapping[str, list[float]] = field(default_factory=dict)  # statistic -> per feature
    p_values: list[float] = field(default_factory=list)  # per feature, combined
    adjusted_p: list[float] = field(default_factory=list)  # BH-adjusted, per feature
    thresholds: Mapping[str, list[float]] = field(default_factory=dict)
    drifted_features: list[int] = field(default_factory=list)
    drifted_share: float = 0.0
    prior_shift: float | None = None
    prior_adjusted_p: float | None = None
    estimated_accuracy: float | None = None
    naive_accuracy: float | None = None
    realised_accuracy: float | None = None
    feedback_count: int = 0
    evidence: float = 0.0  # log10(level / min adjusted p), clipped


def _feature_p_values(null: NullModel, scores: Mapping[str, NDArray], stats: Sequence[str]) -> NDArray:
    p = np.stack([null.p_values(stat, scores[stat]) for stat in stats])
    return np.minimum(p.min(axis=0) * len(stats), 1.0)


def score_windows(
    items: Sequence[tuple[WindowInput, Reference, NullModel | None]], policy: MonitorPolicy
) -> list[CohortScore]:
    """Score one time slice of cohort windows; BH runs across all their features together."""
    partial: list[dict[str, Any]] = []
    pooled: list[NDArray] = []
    for window, ref, null in items:
        entry = _score_one(window, ref, null, policy)
        partial.append(entry)
        if entry["verdict"] != "inconclusive":
            pooled.append(entry["tests"])
    adjusted_all = false_discovery_control(np.concatenate(pooled), method="bh") if pooled else None
    results: list[CohortScore] = []
    offset = 0
    total_tests = sum(len(t) for t in pooled)
    for (_window, _ref, null), entry in zip(items, partial, strict=True):
        tests = entry.pop("tests")
        if entry["verdict"] == "inconclusive" or adjusted_all is None or null is None:
            results.append(CohortScore(**entry))
            continue
        adjusted = adjusted_all[offset : offset + len(tests)]
        offset += len(tests)
        n_features = len(entry["p_values"])
        feature_adj = adjusted[:n_features]
        drifted = [int(i) for i in np.flatnonzero(feature_adj <= policy.false_alarm_rate)]
        share = len(drifted) / max(n_features, 1)
        prior_adj = float(adjusted[n_features]) if len(adjusted) > n_features else None
        prior_drift = prior_adj is not None and prior_adj <= policy.false_alarm_rate
        drift = bool(drifted) and share > policy.dataset_drift_share or prior_drift
        min_adj = float(max(adjusted.min(), 1e-300))
        evidence = float(np.clip(math.log10(policy.false_alarm_rate / min_adj), -_EVIDENCE_CAP, _EVIDENCE_CAP))
        single_level = policy.false_alarm_rate / (total_tests * len(policy.decision_statistics))
        thresholds = {
            stat: [float(v) for v in null.threshold(stat, single_level)]
            for stat in policy.decision_statistics
        }
        results.append(
            CohortScore(
                **{**entry, "verdict": "drift" if drift else "ok"},
                adjusted_p=[float(v) for v in feature_adj],
                thresholds=thresholds,
                drifted_features=drifted,
                drifted_share=share,
                prior_adjusted_p=prior_adj,
                evidence=evidence,
            )
        )
    return results


def _score_one(
    window: WindowInput, ref: Reference, null: NullModel | None, policy: MonitorPolicy
) -> dict[str, Any]:
    observed = np.asarray(window.feature_histograms, dtype=np.int64)
    if observed.shape != ref.feature_histograms.shape:
        raise ValueError(
            f"cohort {window.cohort}: histograms of shape {observed.shape} do not match the "
            f"reference's {ref.feature_histograms.shape}"
        )
    entry: dict[str, Any] = {"cohort": window.cohort, "count": window.count}
    scores = score_features(ref.feature_histograms, observed, ref.bin_edges)
    entry["scores"] = {stat: [float(v) for v in values] for stat, values in scores.items()}
    shift = None
    if ref.predicted_classes is not None and window.predicted_classes is not None:
        shift = float(prior_shift(ref.predicted_classes, window.predicted_classes))
    entry["prior_shift"] = shift
    if window.class_confidence is not None:
        entry["naive_accuracy"] = naive_accuracy(window.class_confidence)
        if ref.calibration is not None:
            entry["estimated_accuracy"] = estimated_accuracy(window.class_confidence, ref.calibration)
    if window.confusion is not None:
        entry["realised_accuracy"], entry["feedback_count"] = realised_accuracy(window.confusion)
    if window.count < policy.min_count or null is None:
        entry["verdict"] = "inconclusive"
        entry["tests"] = np.empty(0)
        return entry
    p = _feature_p_values(null, scores, policy.decision_statistics)
    entry["p_values"] = [float(v) for v in p]
    tests = p if shift is None else np.append(p, null.prior_p_value(shift))
    entry["verdict"] = "ok"
    entry["tests"] = tests
    return entry


@dataclass(frozen=True)
class MonitorEvent:
    kind: EventKind
    cohort: str
    evidence: Mapping[str, Any]


@dataclass(frozen=True)
class CohortState:
    """What `confirm` remembers about a cohort between windows."""

    cusum: float = 0.0
    drift_alarmed: bool = False
    quality_alarmed: bool = False
    clean_windows: int = 0
    quality_clean_windows: int = 0
    windows: tuple[str, ...] = ()  # window ids contributing to the current CUSUM run


def _accuracy_drop(score: CohortScore, ref: Reference, policy: MonitorPolicy) -> dict[str, float] | None:
    if ref.accuracy is None:
        return None
    floor = ref.accuracy - policy.max_accuracy_drop
    found: dict[str, float] = {}
    if score.estimated_accuracy is not None and _significantly_below(
        score.estimated_accuracy, score.count, floor, policy.false_alarm_rate
    ):
        found["estimated_accuracy"] = score.estimated_accuracy
    if (
        score.realised_accuracy is not None
        and score.feedback_count >= policy.min_feedback
        and _significantly_below(
            score.realised_accuracy, score.feedback_count, floor, policy.false_alarm_rate
        )
    ):
        found["realised_accuracy"] = score.realised_accuracy
    return found or None


def _significantly_below(accuracy: float, count: int, floor: float, rate: float) -> bool:
    """`accuracy` over `count` predictions is below `floor` beyond sampling noise: a one-sided
    binomial test at the false-alarm `rate` (75 labels measure accuracy to about +-4 pp, so
    a window a little under the floor is not yet a drop)."""
    from scipy.stats import binom

    if accuracy >= floor or count <= 0:
        return False
    correct = int(round(accuracy * count))
    return bool(binom.cdf(correct, count, min(max(floor, 0.0), 1.0)) < rate)


def _drift_evidence(score: CohortScore, policy: MonitorPolicy, windows: tuple[str, ...]) -> dict[str, Any]:
    order = sorted(score.drifted_features, key=lambda i: score.adjusted_p[i])[: policy.top_features]
    return {
        "cohort": score.cohort,
        "windows": list(windows),
        "count": score.count,
        "features": order,
        "drifted_share": score.drifted_share,
        "scores": {stat: [score.scores[stat][i] for i in order] for stat in score.scores},
        "thresholds": {stat: [score.thresholds[stat][i] for i in order] for stat in score.thresholds},
        "adjusted_p": [score.adjusted_p[i] for i in order],
        "prior_shift": score.prior_shift,
        "prior_adjusted_p": score.prior_adjusted_p,
        "cusum": None,
    }


def confirm(
    state: CohortState,
    score: CohortScore,
    ref: Reference,
    policy: MonitorPolicy,
    window_id: str,
) -> tuple[CohortState, list[MonitorEvent]]:
    """Advance a cohort's confirmation state by one scored window."""
    if score.verdict == "inconclusive":
        return state, []
    events: list[MonitorEvent] = []
    cusum = max(0.0, state.cusum + score.evidence) if score.evidence > 0 else 0.0
    windows = (*state.windows, window_id) if cusum > 0 else ()
    drift_alarmed, clean = state.drift_alarmed, state.clean_windows
    if score.verdict == "drift":
        clean = 0
        if not drift_alarmed and cusum >= policy.cusum_threshold:
            drift_alarmed = True
            evidence = _drift_evidence(score, policy, windows)
            evidence["cusum"] = cusum
            events.append(MonitorEvent("drift_detected", score.cohort, evidence))
    else:
        clean += 1
        if drift_alarmed and clean >= policy.recover_windows:
            drift_alarmed = False
            events.append(
                MonitorEvent(
                    "recovered",
                    score.cohort,
                    {"cohort": score.cohort, "what": "drift", "windows": [window_id], "clean_windows": clean},
                )
            )
    quality_alarmed, quality_clean = state.quality_alarmed, state.quality_clean_windows
    drop = _accuracy_drop(score, ref, policy)
    if drop is not None:
        quality_clean = 0
        if not quality_alarmed:
            quality_alarmed = True
            events.append(
                MonitorEvent(
                    "quality_dropped",
                    score.cohort,
                    {
                        "cohort": score.cohort,
                        "windows": [window_id],
                        "reference_accuracy": ref.accuracy,
                        "max_accuracy_drop": policy.max_accuracy_drop,
                        "naive_accuracy": score.naive_accuracy,
                        "feedback_count": score.feedback_count,
                        **drop,
                    },
                )
            )
    elif quality_alarmed:
        quality_clean += 1
        if quality_clean >= policy.recover_windows:
            quality_alarmed = False
            events.append(
                MonitorEvent(
                    "recovered",
                    score.cohort,
                    {"cohort": score.cohort, "what": "quality", "windows": [window_id],
                     "estimated_accuracy": score.estimated_accuracy},
                )
            )
    new_state = replace(
        state,
        cusum=cusum,
        drift_alarmed=drift_alarmed,
        clean_windows=clean,
        quality_alarmed=quality_alarmed,
        quality_clean_windows=quality_clean,
        windows=windows[-20:],
    )
    return new_state, events
