"""What a federated run produced, and the check that it produced anything at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeops.errors import TrainingError
from server.federated.ledger import RoundOutcome

__all__ = ["FederatedResult", "check_progress"]


@dataclass(frozen=True)
class FederatedResult:
    config: dict[str, Any]
    rounds: list[RoundOutcome]
    initial_metrics: dict[str, float]
    weights: list[NDArray[Any]]
    weight_names: list[str]
    drift_reference: NDArray[np.int64] | None
    drift_examples: int
    wall_seconds: float
    data_fingerprint: str
    code_version: str
    secagg: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # FleetEvaluation.to_json() (server.federated.fleet_eval): candidate and champion on the
    # participants' feedback eval rows, per class and per cohort; None when not asked for.
    fleet_evaluation: dict[str, Any] | None = None

    @property
    def aggregated_rounds(self) -> list[RoundOutcome]:
        return [r for r in self.rounds if r.status == "aggregated"]

    @property
    def halted_rounds(self) -> list[RoundOutcome]:
        return [r for r in self.rounds if r.status == "halted"]

    @property
    def final_metrics(self) -> dict[str, float | None]:
        last = self.aggregated_rounds[-1] if self.aggregated_rounds else None
        return {
            "heldout_accuracy": last.heldout_accuracy if last else None,
            "heldout_loss": last.heldout_loss if last else None,
            "federated_accuracy": last.federated_accuracy if last else None,
            "federated_loss": last.federated_loss if last else None,
        }

    def metrics_json(self) -> dict[str, Any]:
        """What the registry stores as the run's metrics."""
        fit = [r.fit_seconds for r in self.rounds]
        return {
            **self.final_metrics,
            "initial": self.initial_metrics,
            "rounds": [r.to_json() for r in self.rounds],
            "rounds_aggregated": len(self.aggregated_rounds),
            "rounds_halted": len(self.halted_rounds),
            "mean_fit_seconds": sum(fit) / len(fit) if fit else None,
            "wall_seconds": self.wall_seconds,
            "drift_reference_examples": self.drift_examples,
            **({"fleet_evaluation": self.fleet_evaluation} if self.fleet_evaluation else {}),
        }


def check_progress(rounds: list[RoundOutcome], num_rounds: int) -> None:
    """Raise TrainingError unless at least one round produced a new global model."""
    if any(r.status == "aggregated" for r in rounds):
        return
    lines = [f"  round {r.round}: {r.status} - {r.reason} "
             f"(sampled {r.sampled}, replied {r.replied}, dropped {r.dropped})" for r in rounds]
    if len(rounds) < num_rounds:
        lines.append(f"  only {len(rounds)} of {num_rounds} rounds ran")
    raise TrainingError(
        "federated training produced no new model, so nothing was registered:\n" + "\n".join(lines)
    )
