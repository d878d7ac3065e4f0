"""The label-free canary judgment and the merging of monitor windows."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from edgeops.errors import ConfigError
from server.pipeline.canary import (
    CanaryJudgment,
    CohortQuality,
    aggregate_windows,
    judge_canary,
)
from server.pipeline.policy import CanaryPolicy

pytestmark = [pytest.mark.pipeline]

POLICY = CanaryPolicy(min_inferences=200, max_accuracy_drop=0.05)


def _q(group: str, inferences: int, accuracy: float | None) -> CohortQuality:
    return CohortQuality(group, inferences, accuracy)


def test_pass_when_every_counted_group_is_within_the_drop() -> None:
    canary = [_q("lab", 400, 0.94), _q("field", 300, 0.90)]
    control = [_q("lab", 1600, 0.95), _q("field", 1200, 0.93)]

    judgment = judge_canary(canary, control, POLICY)

    assert judgment.verdict == "pass"
    assert [e.group for e in judgment.evidence] == ["field", "lab"]
    field = judgment.evidence[0]
    assert field.gap == pytest.approx(0.03) and field.counted
    assert (field.canary_inferences, field.control_inferences) == (300, 1200)
    assert judgment.reason == "2 of 2 groups judged; largest drop +0.030 (field) within 0.05"


def test_fail_when_one_group_drops_too_far() -> None:
    canary = [_q("lab", 400, 0.94), _q("field", 300, 0.81)]
    control = [_q("lab", 1600, 0.95), _q("field", 1200, 0.90)]

    judgment = judge_canary(canary, control, POLICY)

    assert judgment.verdict == "fail"
    assert judgment.reason == (
        "group field: canary estimated accuracy 0.810 is 0.090 below control 0.900 (max drop 0.05)"
    )


def test_a_drop_exactly_at_the_limit_passes() -> None:
    judgment = judge_canary([_q("lab", 500, 0.85)], [_q("lab", 500, 0.90)], POLICY)

    assert judgment.verdict == "pass"


def test_a_fleet_wide_change_in_both_cohorts_cancels_out() -> None:
    # A change that hits every device at once (new lighting) costs both the canary and the
    # control 30 points; the gap between them, which is what the candidate is blamed for, stays.
    before = judge_canary([_q("lab", 500, 0.95)], [_q("lab", 2000, 0.96)], POLICY)
    during = judge_canary([_q("lab", 500, 0.65)], [_q("lab", 2000, 0.66)], POLICY)

    assert before.verdict == during.verdict == "pass"
    assert during.evidence[0].gap == pytest.approx(before.evidence[0].gap)


def test_a_candidate_regression_fails_even_when_absolute_accuracy_looks_fine() -> None:
    judgment = judge_canary([_q("lab", 500, 0.90)], [_q("lab", 2000, 0.99)], POLICY)

    assert judgment.verdict == "fail"


def test_inconclusive_when_no_group_has_enough_inferences_on_both_sides() -> None:
    canary = [_q("lab", 150, 0.20), _q("field", 900, 0.95)]
    control = [_q("lab", 2000, 0.95), _q("field", 199, 0.95)]

    judgment = judge_canary(canary, control, POLICY)

    # The lab canary looks terrible, but 150 inferences are not evidence: never pass, never fail.
    assert judgment.verdict == "inconclusive"
    assert not any(e.counted for e in judgment.evidence)
    assert "no group has 200 inferences" in judgment.reason
    assert "lab: too few inferences (canary 150, control 2000" in judgment.reason


def test_inconclusive_without_any_cohort() -> None:
    judgment = judge_canary([], [], POLICY)

    assert judgment.verdict == "inconclusive" and judgment.evidence == ()
    assert "no cohort reported" in judgment.reason


def test_only_counted_groups_decide() -> None:
    canary = [_q("lab", 50, 0.10), _q("field", 400, 0.93)]
    control = [_q("lab", 2000, 0.95), _q("field", 1200, 0.94)]

    judgment = judge_canary(canary, control, POLICY)

    assert judgment.verdict == "pass"
    assert judgment.reason.startswith("1 of 2 groups judged")


def test_a_group_without_an_estimate_or_a_side_is_not_counted() -> None:
    canary = [_q("lab", 900, None), _q("hq", 900, 0.9)]
    control = [_q("lab", 900, 0.95), _q("field", 900, 0.95)]

    judgment = judge_canary(canary, control, POLICY)

    notes = {e.group: e.note for e in judgment.evidence}
    assert judgment.verdict == "inconclusive"
    assert notes["field"] == "no canary devices in this group"
    assert notes["hq"] == "no control devices in this group"
    assert notes["lab"].startswith("too few inferences (canary 0,")


def test_a_group_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="canary lists group 'lab' twice"):
        judge_canary([_q("lab", 1, 0.5), _q("lab", 1, 0.5)], [], POLICY)


def test_judgment_round_trips_through_json() -> None:
    judgment = judge_canary([_q("lab", 400, 0.8)], [_q("lab", 400, 0.9)], POLICY)

    stored = json.loads(json.dumps(judgment.to_json()))

    assert stored["verdict"] == "fail" and stored["evidence"][0]["group"] == "lab"
    assert CanaryJudgment.from_json(stored) == judgment


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"group": "", "inferences": 1, "estimated_accuracy": 0.5}, "needs a group name"),
        ({"group": "g", "inferences": -1, "estimated_accuracy": 0.5}, "must be >= 0"),
        ({"group": "g", "inferences": 1, "estimated_accuracy": 1.5}, "estimated_accuracy must be"),
        ({"group": "g", "inferences": 1, "estimated_accuracy": 0.5, "realised_accuracy": -0.1},
         "realised_accuracy must be"),
    ],
)
def test_bad_cohort_quality_is_refused(kwargs: dict[str, Any], what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        CohortQuality(**kwargs)


def _window(count: int, estimated: float | None, realised: float | None = None,
            feedback: int = 0, group: str | None = "lab") -> dict[str, Any]:
    return {"cohort": f"digits@2|{group}", "group": group, "count": count,
            "estimated_accuracy": estimated, "realised_accuracy": realised,
            "feedback_count": feedback}


def test_aggregate_windows_weights_by_count_and_feedback() -> None:
    rows = [
        _window(100, 0.90, realised=1.0, feedback=10),
        _window(300, 0.70, realised=0.5, feedback=30),
        _window(50, None),  # no estimate: adds no inferences
    ]

    quality = aggregate_windows(rows)

    assert quality.group == "lab"
    assert quality.inferences == 400
    assert quality.estimated_accuracy == pytest.approx((100 * 0.9 + 300 * 0.7) / 400)
    assert quality.feedback_count == 40
    assert quality.realised_accuracy == pytest.approx((10 * 1.0 + 30 * 0.5) / 40)


def test_aggregate_windows_without_data() -> None:
    quality = aggregate_windows([], group="lab")
    fleet = aggregate_windows([_window(10, None, group=None)])

    assert quality == CohortQuality("lab", 0, None, None, 0)
    assert fleet.group == "fleet" and fleet.estimated_accuracy is None


def test_aggregate_windows_refuses_mixed_cohorts() -> None:
    with pytest.raises(ConfigError, match="one group, got field, lab"):
        aggregate_windows([_window(1, 0.5), _window(1, 0.5, group="field")])
    with pytest.raises(ConfigError, match="no rows and no group"):
        aggregate_windows([])
    mixed = [_window(1, 0.5), {**_window(1, 0.5), "cohort": "digits@3|lab"}]
    with pytest.raises(ConfigError, match=re.escape("one cohort, got digits@2|lab, digits@3|lab")):
        aggregate_windows(mixed)


def test_aggregated_windows_feed_the_judgment() -> None:
    canary = aggregate_windows([_window(120, 0.80), _window(120, 0.84)])
    control = aggregate_windows([_window(600, 0.93), _window(600, 0.95)])

    judgment = judge_canary([canary], [control], POLICY)

    assert judgment.verdict == "fail"
    assert judgment.evidence[0].gap == pytest.approx(0.94 - 0.82)
