"""The Flower client: trains the task's model on this device's data with the task's own
train function, and evaluates it on the device's held-out rows, or (fleet evaluation) on
the eval side of its feedback store, replying with per-class counts only."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.client import NumPyClient
from numpy.typing import NDArray

from agent.federated.local_data import LocalData, fleet_eval_data, load_local_data, partition_id
from agent.federated.mods import HISTOGRAM_STATE_KEY
from edgeops.errors import ConfigError
from edgeops.federated.config import ClientRecipe
from edgeops.federated.histograms import local_frequencies
from edgeops.tasks import Task, TrainConfig, load_task

__all__ = [
    "HISTOGRAM_STATE_KEY",
    "SimulatedDropout",
    "TaskClient",
    "class_counts",
    "get_weights",
    "set_weights",
]

logger = logging.getLogger(__name__)

_SEED_STRIDE = 7919


class SimulatedDropout(RuntimeError):
    """Raised by a client told to drop out (fault injection): Flower sees a failed reply."""


def get_weights(model: torch.nn.Module) -> list[NDArray[np.float32]]:
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: torch.nn.Module, weights: list[NDArray[Any]]) -> None:
    state = model.state_dict()
    if len(weights) != len(state):
        raise ConfigError(f"the server sent {len(weights)} arrays; the model has {len(state)}")
    model.load_state_dict(
        {name: torch.as_tensor(np.asarray(w)) for name, w in zip(state, weights, strict=True)},
        strict=True,
    )


class TaskClient(NumPyClient):
    """One device's participation in a run; built afresh by Flower for every message."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._node_config: Mapping[str, Any] = dict(context.node_config)
        self._partition = partition_id(self._node_config)

    def _recipe(self, config: Mapping[str, Any]) -> ClientRecipe:
        recipe = ClientRecipe.from_config(config)
        pinned = self._node_config.get("task")
        if pinned is not None and str(pinned) != recipe.task:
            raise ConfigError(f"this device trains {pinned!r}, the server asked for {recipe.task!r}")
        return recipe

    def _setup(self, config: Mapping[str, Any]) -> tuple[ClientRecipe, Task, LocalData]:
        recipe = self._recipe(config)
        return recipe, load_task(recipe.task), load_local_data(self._node_config, recipe)

    def get_parameters(self, config: dict[str, Any]) -> list[NDArray[Any]]:
        recipe = ClientRecipe.from_config(config)
        return get_weights(load_task(recipe.task).make_model())

    def fit(
        self, parameters: list[NDArray[Any]], config: dict[str, Any]
    ) -> tuple[list[NDArray[Any]], int, dict[str, Any]]:
        recipe, task, data = self._setup(config)
        if recipe.dropped(self._partition):
            raise SimulatedDropout(f"partition {self._partition} drops out (fault injection)")
        model = task.make_model()
        set_weights(model, parameters)
        train_config = TrainConfig(
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            seed=recipe.seed + _SEED_STRIDE * recipe.server_round + max(self._partition, 0),
            proximal_mu=recipe.proximal_mu,
        )
        result = task.train(model, data.x_train, data.y_train, train_config)
        if recipe.histogram:
            edges = task.input_schema.feature_bin_edges
            frequencies = local_frequencies(data.x_train, edges)
            self._context.state.array_records[HISTOGRAM_STATE_KEY] = ArrayRecord(
                numpy_ndarrays=[frequencies]
            )
        return get_weights(model), int(result.num_examples), {"train_loss": float(result.loss)}

    def evaluate(
        self, parameters: list[NDArray[Any]], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        recipe = self._recipe(config)
        if recipe.fleet_evaluation:
            return self._fleet_evaluate(parameters, recipe)
        _recipe, task, data = self._setup(config)
        if len(data.y_test) == 0:
            return 0.0, 0, {}
        model = task.make_model()
        set_weights(model, parameters)
        metrics = task.evaluate(model, data.x_test, data.y_test)
        return float(metrics["loss"]), len(data.y_test), {"accuracy": float(metrics["accuracy"])}

    def _fleet_evaluate(
        self, parameters: list[NDArray[Any]], recipe: ClientRecipe
    ) -> tuple[float, int, dict[str, Any]]:
        """Per-class counts on the feedback eval split; zero counts when there is none."""
        task = load_task(recipe.task)
        data = fleet_eval_data(self._node_config, recipe)
        model = task.make_model()
        set_weights(model, parameters)
        metrics: dict[str, Any] = {"cohort_index": data.cohort_index}
        metrics.update(class_counts(task, model, data.x, data.y))
        loss = float(task.evaluate(model, data.x, data.y)["loss"]) if len(data.y) else 0.0
        return loss, len(data.y), metrics


def class_counts(
    task: Task, model: torch.nn.Module, x: NDArray[Any], y: NDArray[np.int64]
) -> dict[str, int]:
    """`correct_<c>` and `total_<c>` for every class c of the task, from the task's own
    evaluate function on each class's rows (its accuracy times the row count is exact)."""
    counts: dict[str, int] = {}
    for label in range(task.num_classes):
        rows = np.flatnonzero(y == label)
        correct = 0
        if len(rows):
            accuracy = float(task.evaluate(model, x[rows], y[rows])["accuracy"])
            correct = round(accuracy * len(rows))
        counts[f"correct_{label}"] = correct
        counts[f"total_{label}"] = len(rows)
    return counts
