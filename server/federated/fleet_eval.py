"""The federated evaluation of the fleet's fresh labelled data: named weight sets (the
candidate a run produced, the champion it warm-started from) scored on every participant's
feedback eval split, per class and per cohort.

    run_fleet_evaluation(grid, {"candidate": w1, "champion": w0}, recipe, cohorts, classes)
        one evaluate message per node and weight set ──► ClientApp (fleet_evaluation=True)
        ◄── correct_<c>, total_<c>, cohort_index (counts only)
    summarise(...) ──► WeightSetEvaluation   (pure: replies in, sums and ratios out)
    FleetEvaluation.to_json()                (what FederatedResult.fleet_evaluation holds)

Evaluate messages are not secure-aggregated (SecAgg+ wraps fit only): each reply is a
device's per-class counts on its own eval rows and the index of its cohort, nothing else.
The result keeps sums per class and per cohort, never a device's own counts. A reply that
is an error or malformed counts as failed and is left out of the sums.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import Code, EvaluateIns, NDArrays, Scalar, ndarrays_to_parameters
from flwr.serverapp import Grid

from edgeops.errors import NotFoundError, PayloadError
from edgeops.federated.config import ClientRecipe

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "FleetEvaluation",
    "WeightSetEvaluation",
    "run_fleet_evaluation",
    "summarise",
]

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"  # the run's final weights
CHAMPION = "champion"  # the warm-start weights the run began from
NO_COHORT = -1  # a device outside the participants manifest: in the totals, in no cohort


@dataclass(frozen=True)
class WeightSetEvaluation:
    """One weight set on the fleet's eval rows. Ratios are None where there were no rows."""

    name: str
    examples: int
    correct: int
    class_correct: tuple[int, ...]
    class_examples: tuple[int, ...]
    cohort_correct: Mapping[str, int]
    cohort_examples: Mapping[str, int]
    replied: int
    failed: int

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct, self.examples)

    @property
    def class_recall(self) -> tuple[float | None, ...]:
        return tuple(
            _ratio(c, n) for c, n in zip(self.class_correct, self.class_examples, strict=True)
        )

    @property
    def cohort_accuracy(self) -> dict[str, float | None]:
        return {k: _ratio(self.cohort_correct[k], n) for k, n in self.cohort_examples.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "examples": self.examples,
            "accuracy": self.accuracy,
            "class_recall": {str(c): r for c, r in enumerate(self.class_recall)},
            "class_examples": {str(c): n for c, n in enumerate(self.class_examples)},
            "cohort_accuracy": self.cohort_accuracy,
            "cohort_examples": dict(self.cohort_examples),
            "replied": self.replied,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class FleetEvaluation:
    """Every weight set's evaluation, in the order they were sent."""

    cohorts: tuple[str, ...]
    num_classes: int
    weight_sets: tuple[WeightSetEvaluation, ...]

    def get(self, name: str) -> WeightSetEvaluation:
        for evaluation in self.weight_sets:
            if evaluation.name == name:
                return evaluation
        known = ", ".join(e.name for e in self.weight_sets)
        raise NotFoundError(f"the fleet evaluation has no weight set {name!r} (has: {known})")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "cohorts": list(self.cohorts),
            "num_classes": self.num_classes,
            "weight_sets": {e.name: e.to_json() for e in self.weight_sets},
        }


def run_fleet_evaluation(
    grid: Grid,
    weight_sets: Mapping[str, NDArrays],
    recipe: ClientRecipe,
    *,
    cohorts: Sequence[str],
    num_classes: int,
    timeout_s: float | None = None,
) -> FleetEvaluation:
    """Send each weight set to every node with `fleet_evaluation` on and sum the replies.

    A node that does not answer within `timeout_s` counts as failed."""
    config = replace(recipe, fleet_evaluation=True).to_config()
    node_ids = list(grid.get_node_ids())
    evaluations = []
    for name, weights in weight_sets.items():
        content = compat.evaluateins_to_recorddict(
            EvaluateIns(parameters=ndarrays_to_parameters(weights), config=config), True
        )
        messages = [
            Message(
                content=content,
                dst_node_id=node_id,
                message_type=MessageType.EVALUATE,
                group_id=f"fleet-evaluation-{name}",
            )
            for node_id in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=timeout_s))
        metrics, failed = _reply_metrics(replies)
        failed += len(node_ids) - len(replies)
        evaluations.append(
            summarise(name, metrics, cohorts=cohorts, num_classes=num_classes, failed=failed)
        )
        logger.info(
            "fleet evaluation of %s: accuracy %s on %d examples (%d replies, %d failed)",
            name, evaluations[-1].accuracy, evaluations[-1].examples,
            evaluations[-1].replied, failed,
        )
    return FleetEvaluation(tuple(cohorts), num_classes, tuple(evaluations))


def summarise(
    name: str,
    replies: Sequence[Mapping[str, Scalar]],
    *,
    cohorts: Sequence[str],
    num_classes: int,
    failed: int = 0,
) -> WeightSetEvaluation:
    """Sum the replies' per-class counts overall and per cohort; a malformed reply is
    logged and counted as failed."""
    class_correct = [0] * num_classes
    class_examples = [0] * num_classes
    cohort_correct = dict.fromkeys(cohorts, 0)
    cohort_examples = dict.fromkeys(cohorts, 0)
    replied = 0
    for metrics in replies:
        try:
            correct, totals, cohort = _counts(metrics, num_classes, len(cohorts))
        except PayloadError as err:
            logger.warning("ignoring a malformed fleet evaluation reply: %s", err)
            failed += 1
            continue
        replied += 1
        for label in range(num_classes):
            class_correct[label] += correct[label]
            class_examples[label] += totals[label]
        if cohort != NO_COHORT:
            cohort_correct[cohorts[cohort]] += sum(correct)
            cohort_examples[cohorts[cohort]] += sum(totals)
    return WeightSetEvaluation(
        name=name,
        examples=sum(class_examples),
        correct=sum(class_correct),
        class_correct=tuple(class_correct),
        class_examples=tuple(class_examples),
        cohort_correct=cohort_correct,
        cohort_examples=cohort_examples,
        replied=replied,
        failed=failed,
    )


def _reply_metrics(replies: Sequence[Message]) -> tuple[list[Mapping[str, Scalar]], int]:
    metrics: list[Mapping[str, Scalar]] = []
    failed = 0
    for reply in replies:
        if reply.has_error() or not reply.has_content():
            failed += 1
            continue
        result = compat.recorddict_to_evaluateres(reply.content)
        if result.status.code != Code.OK:
            failed += 1
            continue
        metrics.append(result.metrics)
    return metrics, failed


def _counts(
    metrics: Mapping[str, Scalar], num_classes: int, num_cohorts: int
) -> tuple[list[int], list[int], int]:
    correct = [_count(metrics, f"correct_{c}") for c in range(num_classes)]
    totals = [_count(metrics, f"total_{c}") for c in range(num_classes)]
    if any(c > n for c, n in zip(correct, totals, strict=True)):
        raise PayloadError("a class has more correct than total examples")
    cohort = metrics.get("cohort_index")
    if isinstance(cohort, bool) or not isinstance(cohort, int):
        raise PayloadError(f"cohort_index must be an int, got {cohort!r}")
    if not NO_COHORT <= cohort < num_cohorts:
        raise PayloadError(f"cohort_index {cohort} is not in {NO_COHORT}..{num_cohorts - 1}")
    return correct, totals, cohort


def _count(metrics: Mapping[str, Scalar], key: str) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"{key} must be a count (an int >= 0), got {value!r}")
    return value


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
