"""The label-free canary judgment: the canary cohort's estimated accuracy against a control.

    canary  = [aggregate_windows(windows of (candidate release, group g)) for each group g]
    control = [aggregate_windows(windows of (champion release, group g)) for each group g]
    judgment = judge_canary(canary, control, policy.canary)   # "pass" | "fail" | "inconclusive"

While a canary step runs, every device group has some devices on the candidate (the canary
cohort of that group) and the rest still on the champion (its control cohort), over the same
time windows. The monitor estimates each cohort's accuracy from its prediction confidences
(CBPE-style, no labels needed). The canary fails when, in any group, its estimate falls more
than `max_accuracy_drop` below the control's.

Why a concurrent control: a change that reaches every device at once (the lighting of a room,
a new camera, the morning's traffic) moves both cohorts of a group together, so it shows as a
drop of both estimates and leaves their gap where it was. Comparing the canary with its own
past, or with the champion's held-out accuracy, would blame the candidate for it; comparing it
with the champion in the same group and the same windows blames the candidate only for what
differs between the two, which is the model.

A group counts only when both sides have at least `min_inferences` predictions behind an
estimate; with no counted group the judgment is "inconclusive", never "pass": too little
traffic is not evidence that the candidate is fine. The realised accuracy (from feedback
labels) is carried in the evidence for the record, not judged on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgeops.errors import ConfigError
from server.monitoring.runner import FLEET_GROUP
from server.pipeline.policy import CanaryPolicy

__all__ = [
    "CanaryJudgment",
    "CanaryVerdict",
    "CohortQuality",
    "GroupEvidence",
    "aggregate_windows",
    "judge_canary",
]

CanaryVerdict = Literal["pass", "fail", "inconclusive"]
_EPS = 1e-9  # float noise in a difference must not decide a canary


@dataclass(frozen=True)
class CohortQuality:
    """One cohort's quality over the judged windows: a release in one device group.

    `inferences` counts the predictions behind `estimated_accuracy` (None: no estimate);
    `realised_accuracy` comes from `feedback_count` labelled predictions (None: no feedback).
    """

    group: str
    inferences: int
    estimated_accuracy: float | None
    realised_accuracy: float | None = None
    feedback_count: int = 0

    def __post_init__(self) -> None:
        if not self.group:
            raise ConfigError("cohort quality needs a group name")
        if self.inferences < 0 or self.feedback_count < 0:
            raise ConfigError(
                f"group {self.group!r}: inferences and feedback_count must be >= 0, got "
                f"{self.inferences} and {self.feedback_count}"
            )
        for name, value in (("estimated_accuracy", self.estimated_accuracy),
                            ("realised_accuracy", self.realised_accuracy)):
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"group {self.group!r}: {name} must be in [0, 1], got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "inferences": self.inferences,
            "estimated_accuracy": self.estimated_accuracy,
            "realised_accuracy": self.realised_accuracy,
            "feedback_count": self.feedback_count,
        }


@dataclass(frozen=True)
class GroupEvidence:
    """One group's comparison. `gap` is control minus canary estimated accuracy (positive:
    the canary is worse); None with either side missing. `counted` says whether the group
    took part in the verdict; `note` why not, or how it compared."""

    group: str
    canary_accuracy: float | None
    control_accuracy: float | None
    gap: float | None
    canary_inferences: int
    control_inferences: int
    canary_realised_accuracy: float | None
    control_realised_accuracy: float | None
    counted: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "canary_accuracy": self.canary_accuracy,
            "control_accuracy": self.control_accuracy,
            "gap": self.gap,
            "canary_inferences": self.canary_inferences,
            "control_inferences": self.control_inferences,
            "canary_realised_accuracy": self.canary_realised_accuracy,
            "control_realised_accuracy": self.control_realised_accuracy,
            "counted": self.counted,
            "note": self.note,
        }


@dataclass(frozen=True)
class CanaryJudgment:
    """The verdict of one canary check, its per-group evidence (by group name) and why."""

    verdict: CanaryVerdict
    evidence: tuple[GroupEvidence, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": [e.to_json() for e in self.evidence],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CanaryJudgment:
        try:
            evidence = tuple(GroupEvidence(**e) for e in raw["evidence"])
            return cls(raw["verdict"], evidence, str(raw["reason"]))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"canary judgment {raw!r}: {err}") from err


def _by_group(cohorts: Sequence[CohortQuality], side: str) -> dict[str, CohortQuality]:
    out: dict[str, CohortQuality] = {}
    for cohort in cohorts:
        if cohort.group in out:
            raise ConfigError(f"{side} lists group {cohort.group!r} twice; aggregate its windows")
        out[cohort.group] = cohort
    return out


def _compare_group(
    group: str, canary: CohortQuality | None, control: CohortQuality | None, policy: CanaryPolicy
) -> GroupEvidence:
    canary_acc = canary.estimated_accuracy if canary else None
    control_acc = control.estimated_accuracy if control else None
    canary_n = canary.inferences if canary and canary_acc is not None else 0
    control_n = control.inferences if control and control_acc is not None else 0
    gap = control_acc - canary_acc if canary_acc is not None and control_acc is not None else None
    need = policy.min_inferences
    counted = gap is not None and canary_n >= need and control_n >= need
    if counted:
        note = f"canary {canary_acc:.3f} vs control {control_acc:.3f}: drop {gap:+.3f}"
    elif canary is None or control is None:
        note = f"no {'canary' if canary is None else 'control'} devices in this group"
    else:
        note = (f"too few inferences (canary {canary_n}, control {control_n}; "
                f"each side needs {need})")
    return GroupEvidence(
        group=group,
        canary_accuracy=canary_acc,
        control_accuracy=control_acc,
        gap=gap,
        canary_inferences=canary_n,
        control_inferences=control_n,
        canary_realised_accuracy=canary.realised_accuracy if canary else None,
        control_realised_accuracy=control.realised_accuracy if control else None,
        counted=counted,
        note=note,
    )


def judge_canary(
    canary: Sequence[CohortQuality], control: Sequence[CohortQuality], policy: CanaryPolicy
) -> CanaryJudgment:
    """Pass, fail or inconclusive for one check of a canary step (see the module docstring).

    Groups are paired by name; a group with only one side is reported, not counted.
    """
    canary_by = _by_group(canary, "canary")
    control_by = _by_group(control, "control")
    evidence = tuple(
        _compare_group(g, canary_by.get(g), control_by.get(g), policy)
        for g in sorted(set(canary_by) | set(control_by))
    )
    counted = [e for e in evidence if e.counted]
    if not counted:
        shown = "; ".join(f"{e.group}: {e.note}" for e in evidence) or "no cohort reported"
        return CanaryJudgment(
            "inconclusive",
            evidence,
            f"no group has {policy.min_inferences} inferences with an accuracy estimate on "
            f"both sides ({shown})",
        )
    gap, group, canary_acc, control_acc = max(
        (e.gap or 0.0, e.group, e.canary_accuracy or 0.0, e.control_accuracy or 0.0)
        for e in counted
    )
    limit = policy.max_accuracy_drop
    if gap - limit > _EPS:
        return CanaryJudgment(
            "fail",
            evidence,
            f"group {group}: canary estimated accuracy {canary_acc:.3f} is {gap:.3f} below "
            f"control {control_acc:.3f} (max drop {limit:g})",
        )
    return CanaryJudgment(
        "pass",
        evidence,
        f"{len(counted)} of {len(evidence)} groups judged; largest drop {gap:+.3f} "
        f"({group}) within {limit:g}",
    )


def aggregate_windows(
    rows: Iterable[Mapping[str, Any]], *, group: str | None = None
) -> CohortQuality:
    """One cohort's monitor windows (`server.monitoring.store.window_summary` dicts) merged.

    The estimated accuracy is the mean of the windows' estimates weighted by their `count`
    (windows without an estimate add no inferences); the realised accuracy the mean weighted
    by `feedback_count`. A window's `group` of None is the whole fleet. `group` names the
    cohort when there may be no rows; every row must belong to it (and to one `cohort`).
    """
    rows = list(rows)
    groups = {FLEET_GROUP if r.get("group") is None else str(r["group"]) for r in rows}
    if group is not None:
        groups.add(group)
    if len(groups) != 1:
        raise ConfigError(
            "aggregate_windows merges the windows of one group, got "
            + (", ".join(sorted(groups)) if groups else "no rows and no group")
        )
    cohorts = {r["cohort"] for r in rows if "cohort" in r}
    if len(cohorts) > 1:
        raise ConfigError(f"aggregate_windows merges one cohort, got {', '.join(sorted(cohorts))}")
    inferences = 0
    estimated_sum = 0.0
    feedback = 0
    realised_sum = 0.0
    for row in rows:
        count = int(row.get("count") or 0)
        estimate = row.get("estimated_accuracy")
        if estimate is not None and count > 0:
            inferences += count
            estimated_sum += count * float(estimate)
        labelled = int(row.get("feedback_count") or 0)
        realised = row.get("realised_accuracy")
        if realised is not None and labelled > 0:
            feedback += labelled
            realised_sum += labelled * float(realised)
    return CohortQuality(
        group=groups.pop(),
        inferences=inferences,
        estimated_accuracy=estimated_sum / inferences if inferences else None,
        realised_accuracy=realised_sum / feedback if feedback else None,
        feedback_count=feedback,
    )
