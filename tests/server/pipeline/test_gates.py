"""TFMA-style gates: each gate passes, fails and fails as "not measured"; stages; verdicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgeops.errors import ConfigError
from server.pipeline.gates import (
    GATES,
    CandidateMetrics,
    GateResult,
    GateVerdict,
    check_gates,
    evaluate_gates,
)
from server.pipeline.policy import GatePolicy

pytestmark = [pytest.mark.pipeline]

GOOD = CandidateMetrics(
    heldout_accuracy=0.975,
    fleet_accuracy=0.93,
    class_recall={0: 0.99, 1: 0.95, 3: 0.90},
    cohort_accuracy={"lab": 0.95, "field": 0.91},
    fleet_examples=800,
    int8_drop_pp=0.4,
    int8_agreement=0.995,
    p50_latency_us=850.0,
)
CHAMPION = CandidateMetrics(heldout_accuracy=0.978, fleet_accuracy=0.61)


def _only(**threshold: Any) -> GatePolicy:
    """A gate policy with one gate of interest (a value gate keeps the policy valid)."""
    evaluation = {"heldout_accuracy_min", "heldout_change_min", "fleet_accuracy_min",
                  "fleet_change_min", "class_recall_min", "cohort_gap_max"}
    base: dict[str, Any] = {} if set(threshold) & evaluation else {"heldout_accuracy_min": 0.0}
    return GatePolicy(**base, **threshold)


def _metrics(**values: Any) -> CandidateMetrics:
    return CandidateMetrics(**values)


def _one(gates: GatePolicy, candidate: CandidateMetrics, name: str,
         champion: CandidateMetrics | None = CHAMPION) -> GateResult:
    return next(r for r in evaluate_gates(gates, candidate, champion) if r.name == name)


def test_the_table_covers_every_gate_of_the_policy() -> None:
    assert sorted(spec.name for spec in GATES) == sorted(GatePolicy.model_fields)


@pytest.mark.parametrize(
    ("name", "threshold", "metric", "passing", "failing", "failing_detail"),
    [
        ("heldout_accuracy_min", 0.9, "heldout_accuracy", 0.95, 0.85,
         "held-out accuracy 0.85 < 0.9"),
        ("fleet_accuracy_min", 0.8, "fleet_accuracy", 0.8, 0.79, "fleet accuracy 0.79 < 0.8"),
        ("min_fleet_examples", 200, "fleet_examples", 200, 120,
         "insufficient data: 120 labelled fleet examples < 200"),
        ("int8_drop_pp_max", 1.0, "int8_drop_pp", 1.0, 1.6, "int8 accuracy drop (pp) 1.6 > 1"),
        ("int8_agreement_min", 0.98, "int8_agreement", 0.99, 0.97,
         "int8/fp32 agreement 0.97 < 0.98"),
        ("p50_latency_us_max", 1000.0, "p50_latency_us", 999.0, 1250.0,
         "p50 latency (us) 1250 > 1000"),
    ],
)
def test_value_gates(
    name: str, threshold: float, metric: str, passing: float, failing: float, failing_detail: str
) -> None:
    gates = _only(**{name: threshold})

    ok = _one(gates, _metrics(**{metric: passing}), name)
    bad = _one(gates, _metrics(**{metric: failing}), name)
    missing = _one(gates, CandidateMetrics(), name)

    assert (ok.passed, ok.value, ok.threshold, ok.kind) == (True, passing, threshold, "value")
    assert (bad.passed, bad.value, bad.detail) == (False, failing, failing_detail)
    assert (missing.passed, missing.value) == (False, None)
    assert missing.detail.endswith("not measured")


@pytest.mark.parametrize(
    ("name", "metric", "threshold", "champion", "passing", "failing"),
    [
        ("heldout_change_min", "heldout_accuracy", -0.01, 0.975, 0.965, 0.96),
        ("fleet_change_min", "fleet_accuracy", 0.0, 0.61, 0.61, 0.60),
    ],
)
def test_change_gates_compare_with_the_champion(
    name: str, metric: str, threshold: float, champion: float, passing: float, failing: float
) -> None:
    gates = _only(**{name: threshold})
    base = _metrics(**{metric: champion})

    ok = _one(gates, _metrics(**{metric: passing}), name, base)
    bad = _one(gates, _metrics(**{metric: failing}), name, base)

    # Exactly at the threshold passes (0.965 - 0.975 is -0.01 up to float noise).
    assert ok.passed and ok.kind == "change" and ok.champion_value == champion
    assert ok.value == pytest.approx(passing - champion)
    assert not bad.passed and bad.value == pytest.approx(failing - champion)
    assert f"vs champion {champion:.4g}" in bad.detail and "<" in bad.detail


def test_a_change_gate_fails_without_a_champion_measurement() -> None:
    gates = _only(fleet_change_min=0.0)
    candidate = CandidateMetrics(fleet_accuracy=0.95)

    no_champion = _one(gates, candidate, "fleet_change_min", None)
    unmeasured = _one(gates, candidate, "fleet_change_min", CandidateMetrics(heldout_accuracy=0.9))
    no_candidate = _one(gates, CandidateMetrics(), "fleet_change_min", CHAMPION)

    assert not no_champion.passed and "no champion to compare with" in no_champion.detail
    assert not unmeasured.passed and "champion not measured" in unmeasured.detail
    assert not no_candidate.passed and no_candidate.detail == "fleet accuracy not measured"


def test_class_recall_floor_names_the_worst_class() -> None:
    gates = _only(class_recall_min=0.7)

    bad = _one(gates, CandidateMetrics(class_recall={0: 0.98, 3: 0.41, 7: 0.55}), "class_recall_min")
    ok = _one(gates, CandidateMetrics(class_recall={0: 0.98, 3: 0.71}), "class_recall_min")
    missing = _one(gates, CandidateMetrics(class_recall={}), "class_recall_min")

    assert (bad.passed, bad.value, bad.detail) == (False, 0.41, "class 3 recall 0.41 < 0.7")
    assert ok.passed and ok.value == 0.71
    assert not missing.passed and missing.detail == "recall not measured"


def test_cohort_gap_is_best_minus_worst_cohort() -> None:
    gates = _only(cohort_gap_max=0.1)

    bad = _one(gates, CandidateMetrics(cohort_accuracy={"lab": 0.96, "field": 0.80, "hq": 0.9}),
               "cohort_gap_max")
    ok = _one(gates, CandidateMetrics(cohort_accuracy={"lab": 0.96, "field": 0.90}), "cohort_gap_max")
    single = _one(gates, CandidateMetrics(cohort_accuracy={"lab": 0.5}), "cohort_gap_max")

    assert not bad.passed and bad.value == pytest.approx(0.16)
    assert bad.detail == "cohort gap 0.16 (lab 0.96 - field 0.8) > 0.1"
    assert ok.passed and ok.value == pytest.approx(0.06)
    assert single.passed and single.value == 0.0


def test_stages_split_evaluation_from_packaging() -> None:
    gates = GatePolicy(heldout_accuracy_min=0.9, fleet_change_min=0.0, min_fleet_examples=10,
                       int8_drop_pp_max=1.0, p50_latency_us_max=1000.0)

    evaluation = evaluate_gates(gates, GOOD, CHAMPION, stage="evaluation")
    packaging = evaluate_gates(gates, GOOD, CHAMPION, stage="packaging")
    both = evaluate_gates(gates, GOOD, CHAMPION)

    assert [r.name for r in evaluation] == [
        "heldout_accuracy_min", "min_fleet_examples", "fleet_change_min",
    ]
    assert [r.name for r in packaging] == ["int8_drop_pp_max", "p50_latency_us_max"]
    assert both == evaluation + packaging


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="gate stage must be one of evaluation, packaging"):
        evaluate_gates(_only(), GOOD, CHAMPION, stage="serving")  # type: ignore[arg-type]


def test_verdict_names_the_first_failing_gate() -> None:
    gates = GatePolicy(heldout_accuracy_min=0.9, class_recall_min=0.7, cohort_gap_max=0.01)
    candidate = CandidateMetrics(heldout_accuracy=0.95, class_recall={2: 0.9, 3: 0.41},
                                 cohort_accuracy={"a": 0.9, "b": 0.8})

    verdict = check_gates(gates, candidate, CHAMPION, stage="evaluation")

    assert not verdict.passed
    assert verdict.reason == "class_recall_min: class 3 recall 0.41 < 0.7 (and 1 more failing)"
    assert [r.passed for r in verdict.results] == [True, False, False]


def test_verdict_passes_when_every_gate_passes() -> None:
    gates = GatePolicy(heldout_change_min=-0.01, fleet_change_min=0.0, min_fleet_examples=200)

    verdict = check_gates(gates, GOOD, CHAMPION, stage="evaluation")
    empty = check_gates(gates, GOOD, CHAMPION, stage="packaging")

    assert verdict.passed and verdict.reason == "all 3 gates passed"
    assert empty.passed and empty.results == () and "no gate" in empty.reason


def test_results_and_verdicts_round_trip_through_json() -> None:
    verdict = check_gates(GatePolicy(heldout_change_min=-0.01, class_recall_min=0.95), GOOD, CHAMPION)

    stored = json.loads(json.dumps(verdict.to_json()))

    assert stored["results"][0]["champion_value"] == 0.978
    assert stored["results"][1]["threshold"] == 0.95
    assert GateVerdict.from_json(stored) == verdict


def test_candidate_metrics_round_trip_through_json() -> None:
    stored = json.loads(json.dumps(GOOD.to_json()))

    assert stored["class_recall"] == {"0": 0.99, "1": 0.95, "3": 0.9}
    assert CandidateMetrics.from_json(stored) == GOOD
    assert CandidateMetrics.from_json(CandidateMetrics().to_json()) == CandidateMetrics()


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        ({"heldout_accuracy": 1.2}, "heldout_accuracy must be a fraction"),
        ({"class_recall": {3: -0.1}}, r"class_recall\[3\] must be a fraction"),
        ({"cohort_accuracy": {"lab": float("nan")}}, r"cohort_accuracy\[lab\] must be a fraction"),
        ({"fleet_examples": -1}, "fleet_examples must be >= 0"),
        ({"p50_latency_us": -5.0}, "p50_latency_us must be >= 0"),
    ],
)
def test_bad_metrics_are_refused(raw: dict[str, Any], what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        CandidateMetrics(**raw)


def test_from_json_names_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown keys accuracy"):
        CandidateMetrics.from_json({"accuracy": 0.9})
