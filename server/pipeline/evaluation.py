"""The evaluating step's measurements: the server's held-out split, and the fleet's.

    heldout(task_spec, weights_path) -> HeldOut (accuracy, per-class recall)
    fleet_metrics(fleet_evaluation, name) -> what the federated evaluation said of one model

The server's held-out split is the task's fixed test split; the fleet evaluation is the
training job's federated evaluation on the devices' own held-out feedback (counts only, per
class and per cohort; server.federated.fleet_eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HeldOut", "fleet_metrics", "heldout"]


@dataclass(frozen=True)
class HeldOut:
    accuracy: float
    class_recall: dict[int, float]
    examples: int

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "examples": self.examples,
                "class_recall": {str(k): v for k, v in self.class_recall.items()}}


def heldout(task_spec: str, weights: Path) -> HeldOut:
    """The fp32 model of `weights` (a torch state_dict file) on the task's held-out split."""
    import torch

    from edgeops.packaging.source import load_checkpoint
    from edgeops.tasks import load_task

    task = load_task(task_spec)
    data = task.load_data()
    model = load_checkpoint(task, weights).model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(data.x_test, dtype=np.float32)))
    predicted = logits.argmax(dim=1).numpy()
    labels = np.asarray(data.y_test)
    recall = {
        int(c): float((predicted[labels == c] == c).mean())
        for c in np.unique(labels)
    }
    return HeldOut(float((predicted == labels).mean()), recall, int(len(labels)))


def fleet_metrics(fleet_evaluation: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The fleet evaluation's figures for weight set `name` ("candidate" or "champion"):
    accuracy, class_recall {int: float}, cohort_accuracy {str: float}, examples; {} if none."""
    if not fleet_evaluation:
        return {}
    models = fleet_evaluation.get("weight_sets", {})
    entry = models.get(name)
    if not isinstance(entry, dict):
        return {}
    return {
        "accuracy": entry.get("accuracy"),
        "class_recall": {int(k): float(v) for k, v in (entry.get("class_recall") or {}).items()
                         if v is not None},
        "cohort_accuracy": {str(k): float(v)
                            for k, v in (entry.get("cohort_accuracy") or {}).items()
                            if v is not None},
        "examples": int(entry.get("examples", 0) or 0),
    }
