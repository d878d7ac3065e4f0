"""The task's torch model on the server side: initial weights (fresh, or a warm start from a
state_dict file), evaluation on the held-out split, and the state_dict the packaging
pipeline loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from edgeops.errors import ConfigError
from edgeops.packaging.source import load_checkpoint
from edgeops.tasks import Dataset, Task

__all__ = ["evaluator_for", "initial_weights", "state_dict_from", "warm_start_weights"]


def initial_weights(task: Task, seed: int) -> tuple[list[str], list[NDArray[Any]]]:
    """Names and arrays of a freshly initialised model (seeded; the caller's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.make_model()
    state = model.state_dict()
    return list(state), [v.detach().cpu().numpy().copy() for v in state.values()]


def warm_start_weights(task: Task, path: Path) -> tuple[list[str], list[NDArray[Any]]]:
    """Names and arrays of the state_dict file at `path` (what `TrainingRuns.record` stores
    as a run's weights); ConfigError naming the file if it is missing, is not a torch
    state_dict or does not fit the task's model exactly."""
    state = load_checkpoint(task, Path(path)).model.state_dict()
    return list(state), [v.detach().cpu().numpy().copy() for v in state.values()]


def state_dict_from(task: Task, weights: list[NDArray[Any]]) -> dict[str, torch.Tensor]:
    names = list(task.make_model().state_dict())
    if len(names) != len(weights):
        raise ConfigError(f"{len(weights)} arrays do not fit the {task.name!r} model ({len(names)})")
    return {name: torch.as_tensor(np.asarray(w)).clone() for name, w in zip(names, weights, strict=True)}


def evaluator_for(task: Task, dataset: Dataset) -> Callable[[list[NDArray[Any]]], dict[str, float]]:
    """Evaluate weights on the task's fixed held-out split (server side, centralized)."""
    model = task.make_model()

    def evaluate(weights: list[NDArray[Any]]) -> dict[str, float]:
        model.load_state_dict(state_dict_from(task, weights), strict=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the cores belong to the clients
        try:
            return task.evaluate(model, dataset.x_test, dataset.y_test)
        finally:
            torch.set_num_threads(threads)

    return evaluate
