"""TFMA-style gates: a candidate's metrics against the policy's value and change thresholds.

    results = evaluate_gates(policy.gates, candidate, champion, stage="evaluation")
    verdict = GateVerdict.of(results)        # or check_gates(...); verdict.reason if refused

A value gate bounds one of the candidate's metrics; a change gate bounds candidate minus
champion, both measured on the same data (so the question is "better than what runs now", not
"good in absolute terms"). Each gate has a direction: "min" passes at or above its threshold,
"max" at or below. A gate whose metric was not measured, or a change gate without a champion
measurement, fails with "not measured": a missing number never lets a model through.

The gates fall in two stages, after the checks that can measure them: `evaluation` (held-out
split, federated evaluation of the fleet, per class, per cohort, example count) and
`packaging` (int8 fidelity, latency). `GATES` is the table `evaluate_gates` walks, in the
order the first failing gate is reported in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgeops.errors import ConfigError
from server.pipeline.policy import GatePolicy

__all__ = [
    "GATES",
    "CandidateMetrics",
    "GateDirection",
    "GateKind",
    "GateResult",
    "GateSpec",
    "GateStage",
    "GateVerdict",
    "check_gates",
    "evaluate_gates",
]

GateKind = Literal["value", "change"]
GateDirection = Literal["min", "max"]
GateStage = Literal["evaluation", "packaging"]
STAGES: tuple[GateStage, ...] = ("evaluation", "packaging")
_EPS = 1e-9  # float noise in a difference (0.965 - 0.975) must not decide a gate


@dataclass(frozen=True)
class CandidateMetrics:
    """What the evaluation and packaging steps measured of one model; None = not measured.

    Accuracies and recalls are fractions; `class_recall` maps class index to recall,
    `cohort_accuracy` device group to accuracy on the federated evaluation; `fleet_examples`
    counts the labelled examples behind `fleet_accuracy`; `int8_drop_pp` is fp32 minus int8
    accuracy in percentage points; `int8_agreement` the share of inputs both predict alike.
    """

    heldout_accuracy: float | None = None
    fleet_accuracy: float | None = None
    class_recall: Mapping[int, float] | None = None
    cohort_accuracy: Mapping[str, float] | None = None
    fleet_examples: int | None = None
    int8_drop_pp: float | None = None
    int8_agreement: float | None = None
    p50_latency_us: float | None = None

    def __post_init__(self) -> None:
        fractions = {
            "heldout_accuracy": self.heldout_accuracy,
            "fleet_accuracy": self.fleet_accuracy,
            "int8_agreement": self.int8_agreement,
            **{f"class_recall[{k}]": v for k, v in (self.class_recall or {}).items()},
            **{f"cohort_accuracy[{g}]": v for g, v in (self.cohort_accuracy or {}).items()},
        }
        for name, value in fractions.items():
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"candidate metrics: {name} must be a fraction in [0, 1], "
                                  f"got {value!r}")
        for name, count in (("fleet_examples", self.fleet_examples),
                            ("p50_latency_us", self.p50_latency_us)):
            if count is not None and not count >= 0:
                raise ConfigError(f"candidate metrics: {name} must be >= 0, got {count!r}")
        if self.int8_drop_pp is not None and math.isnan(self.int8_drop_pp):
            raise ConfigError("candidate metrics: int8_drop_pp is not a number")

    def to_json(self) -> dict[str, Any]:
        return {
            "heldout_accuracy": self.heldout_accuracy,
            "fleet_accuracy": self.fleet_accuracy,
            "class_recall": (
                None if self.class_recall is None
                else {str(k): v for k, v in sorted(self.class_recall.items())}
            ),
            "cohort_accuracy": (
                None if self.cohort_accuracy is None else dict(sorted(self.cohort_accuracy.items()))
            ),
            "fleet_examples": self.fleet_examples,
            "int8_drop_pp": self.int8_drop_pp,
            "int8_agreement": self.int8_agreement,
            "p50_latency_us": self.p50_latency_us,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CandidateMetrics:
        """What `to_json` wrote (JSON object keys of `class_recall` back to ints)."""
        data = dict(raw)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"candidate metrics: unknown keys {', '.join(unknown)}")
        recall = data.get("class_recall")
        if recall is not None:
            try:
                data["class_recall"] = {int(k): float(v) for k, v in recall.items()}
            except (AttributeError, TypeError, ValueError) as err:
                raise ConfigError(f"candidate metrics: class_recall {recall!r} is not "
                                  "an object of class index to recall") from err
        return cls(**data)


@dataclass(frozen=True)
class GateSpec:
    """One row of the gate table: a GatePolicy key, what it measures and how it compares."""

    name: str
    metric: str
    kind: GateKind
    direction: GateDirection
    stage: GateStage
    label: str  # how the metric reads in a detail line


GATES: tuple[GateSpec, ...] = (
    GateSpec("heldout_accuracy_min", "heldout_accuracy", "value", "min", "evaluation",
             "held-out accuracy"),
    GateSpec("heldout_change_min", "heldout_accuracy", "change", "min", "evaluation",
             "held-out accuracy"),
    GateSpec("min_fleet_examples", "fleet_examples", "value", "min", "evaluation",
             "labelled fleet examples"),
    GateSpec("fleet_accuracy_min", "fleet_accuracy", "value", "min", "evaluation",
             "fleet accuracy"),
    GateSpec("fleet_change_min", "fleet_accuracy", "change", "min", "evaluation",
             "fleet accuracy"),
    GateSpec("class_recall_min", "class_recall", "value", "min", "evaluation", "recall"),
    GateSpec("cohort_gap_max", "cohort_accuracy", "value", "max", "evaluation",
             "cohort accuracy gap"),
    GateSpec("int8_drop_pp_max", "int8_drop_pp", "value", "max", "packaging",
             "int8 accuracy drop (pp)"),
    GateSpec("int8_agreement_min", "int8_agreement", "value", "min", "packaging",
             "int8/fp32 agreement"),
    GateSpec("p50_latency_us_max", "p50_latency_us", "value", "max", "packaging",
             "p50 latency (us)"),
)


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome with everything it was decided on.

    `value` is what was compared with `threshold`: the candidate's metric for a value gate,
    candidate minus `champion_value` for a change gate; None when it was not measured.
    """

    name: str
    metric: str
    kind: GateKind
    direction: GateDirection
    value: float | None
    threshold: float
    champion_value: float | None
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "kind": self.kind,
            "direction": self.direction,
            "value": self.value,
            "threshold": self.threshold,
            "champion_value": self.champion_value,
            "passed": self.passed,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GateResult:
        try:
            return cls(**raw)
        except TypeError as err:
            raise ConfigError(f"gate result {raw!r}: {err}") from err


@dataclass(frozen=True)
class GateVerdict:
    """All gates of a stage together: passed only if every one passed; `reason` names the
    first failing gate with its value and threshold (or says how many passed)."""

    passed: bool
    results: tuple[GateResult, ...]
    reason: str

    @classmethod
    def of(cls, results: Sequence[GateResult]) -> GateVerdict:
        failed = [r for r in results if not r.passed]
        if failed:
            first = failed[0]
            more = f" (and {len(failed) - 1} more failing)" if len(failed) > 1 else ""
            return cls(False, tuple(results), f"{first.name}: {first.detail}{more}")
        if not results:
            return cls(True, (), "no gate is set for this stage")
        return cls(True, tuple(results), f"all {len(results)} gates passed")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "results": [r.to_json() for r in self.results],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GateVerdict:
        try:
            results = tuple(GateResult.from_json(r) for r in raw["results"])
            return cls(bool(raw["passed"]), results, str(raw["reason"]))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"gate verdict {raw!r}: {err}") from err


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _measure(spec: GateSpec, metrics: CandidateMetrics) -> tuple[float, str] | None:
    """(the value the gate compares, how it reads) of `metrics`; None if not measured."""
    raw = getattr(metrics, spec.metric)
    if spec.metric == "class_recall":
        if not raw:
            return None
        worst = min(sorted(raw), key=lambda c: raw[c])
        return float(raw[worst]), f"class {worst} recall {_fmt(raw[worst])}"
    if spec.metric == "cohort_accuracy":
        if not raw:
            return None
        best = max(sorted(raw), key=lambda g: raw[g])
        worst = min(sorted(raw), key=lambda g: raw[g])
        gap = float(raw[best]) - float(raw[worst])
        return gap, (f"cohort gap {_fmt(gap)} ({best} {_fmt(raw[best])} - "
                     f"{worst} {_fmt(raw[worst])})")
    if raw is None:
        return None
    return float(raw), f"{spec.label} {_fmt(float(raw))}"


def _compare(value: float, threshold: float, direction: GateDirection) -> bool:
    if math.isnan(value):
        return False
    if direction == "min":
        return value >= threshold - _EPS
    return value <= threshold + _EPS


def _evaluate(
    spec: GateSpec,
    threshold: float,
    candidate: CandidateMetrics,
    champion: CandidateMetrics | None,
) -> GateResult:
    def result(value: float | None, champion_value: float | None, passed: bool, detail: str) -> GateResult:
        return GateResult(spec.name, spec.metric, spec.kind, spec.direction, value,
                          float(threshold), champion_value, passed, detail)

    sign = ">=" if spec.direction == "min" else "<="
    broken = "<" if spec.direction == "min" else ">"
    measured = _measure(spec, candidate)
    if measured is None:
        return result(None, None, False, f"{spec.label} not measured")
    value, reading = measured
    if spec.kind == "value":
        passed = _compare(value, threshold, spec.direction)
        if spec.name == "min_fleet_examples" and not passed:
            reading = f"insufficient data: {int(value)} {spec.label}"
        return result(value, None, passed,
                      f"{reading} {sign if passed else broken} {_fmt(threshold)}")
    base = _measure(spec, champion) if champion is not None else None
    if base is None:
        what = "no champion to compare with" if champion is None else "champion not measured"
        return result(None, None, False, f"{spec.label} change: {what}")
    change = value - base[0]
    passed = _compare(change, threshold, spec.direction)
    return result(
        change, base[0], passed,
        f"{spec.label} {_fmt(value)} vs champion {_fmt(base[0])}: change {change:+.4g} "
        f"{sign if passed else broken} {threshold:+.4g}",
    )


def evaluate_gates(
    gates: GatePolicy,
    candidate: CandidateMetrics,
    champion: CandidateMetrics | None,
    *,
    stage: GateStage | None = None,
) -> list[GateResult]:
    """Every gate the policy sets (of `stage`; None: both stages), in `GATES` order."""
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"gate stage must be one of {', '.join(STAGES)}, got {stage!r}")
    results = []
    for spec in GATES:
        threshold = getattr(gates, spec.name)
        if threshold is None or (stage is not None and spec.stage != stage):
            continue
        results.append(_evaluate(spec, float(threshold), candidate, champion))
    return results


def check_gates(
    gates: GatePolicy,
    candidate: CandidateMetrics,
    champion: CandidateMetrics | None,
    *,
    stage: GateStage | None = None,
) -> GateVerdict:
    """`evaluate_gates` folded into one verdict."""
    return GateVerdict.of(evaluate_gates(gates, candidate, champion, stage=stage))
