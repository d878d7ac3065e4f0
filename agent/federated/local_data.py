"""A device's local data: a file the operator gives the SuperNode, or (in simulation) the
partition of the task's dataset that this virtual device owns, plus (with `feedback-path`)
the labelled examples the agent's feedback store holds, appended to the training rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.telemetry.feedback_store import FeedbackStore
from edgeops.errors import ConfigError
from edgeops.federated.config import ClientRecipe
from edgeops.tasks import Task, load_task, partition_devices

__all__ = ["LocalData", "add_feedback", "load_local_data"]

DATA_PATH_KEY = "data-path"
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
FEEDBACK_PATH_KEY = "feedback-path"  # the agent's <home>/feedback.db


@dataclass(frozen=True)
class LocalData:
    """Training rows for fit, held-out rows for federated evaluation (may be empty)."""

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]


def partition_id(node_config: Mapping[str, Any]) -> int:
    """The simulated partition of this node, or -1 for a device with its own data file."""
    return int(node_config.get(PARTITION_ID_KEY, -1))


def load_local_data(node_config: Mapping[str, Any], recipe: ClientRecipe) -> LocalData:
    """`data-path` (an .npz with x_train, y_train and optionally x_test, y_test) if the
    SuperNode was given one, else partition `partition-id` of `num-partitions`; with
    `feedback-path`, the device's labelled feedback joins the training rows."""
    data = _base_data(node_config, recipe)
    if FEEDBACK_PATH_KEY in node_config:
        data = add_feedback(data, Path(str(node_config[FEEDBACK_PATH_KEY])))
    return data


def add_feedback(data: LocalData, path: Path) -> LocalData:
    """`data` with the feedback store's labelled examples appended to its training rows
    (unchanged when the store does not exist yet or is empty)."""
    if not path.exists():
        return data
    store = FeedbackStore(path)
    try:
        examples = store.examples()
    finally:
        store.close()
    if not len(examples):
        return data
    row_shape = data.x_train.shape[1:]
    if int(np.prod(examples.inputs.shape[1:])) != int(np.prod(row_shape)):
        raise ConfigError(
            f"feedback examples in {path} have shape {examples.inputs.shape[1:]}, "
            f"the local data {row_shape}"
        )
    x = examples.inputs.reshape(len(examples), *row_shape)
    return LocalData(
        np.concatenate([data.x_train, x]),
        np.concatenate([data.y_train, examples.labels]),
        data.x_test,
        data.y_test,
    )


def _base_data(node_config: Mapping[str, Any], recipe: ClientRecipe) -> LocalData:
    if DATA_PATH_KEY in node_config:
        return _load_file(Path(str(node_config[DATA_PATH_KEY])))
    if PARTITION_ID_KEY not in node_config or NUM_PARTITIONS_KEY not in node_config:
        raise ConfigError(
            "this SuperNode has no local data: start it with --node-config "
            "\"data-path='/path/local.npz'\" (or partition-id=<i> num-partitions=<n> "
            "to serve a slice of the task's own dataset in a demo)"
        )
    return _partition(
        recipe.task,
        int(node_config[PARTITION_ID_KEY]),
        int(node_config[NUM_PARTITIONS_KEY]),
        recipe.alpha,
        recipe.partition_seed,
    )


def _load_file(path: Path) -> LocalData:
    try:
        with np.load(path, allow_pickle=False) as data:
            x_train = np.asarray(data["x_train"], dtype=np.float32)
            y_train = np.asarray(data["y_train"], dtype=np.int64)
            x_test = np.asarray(data["x_test"], dtype=np.float32) if "x_test" in data else x_train[:0]
            y_test = np.asarray(data["y_test"], dtype=np.int64) if "y_test" in data else y_train[:0]
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"cannot read local data {path}: {err}") from err
    return LocalData(x_train, y_train, x_test, y_test)


@lru_cache(maxsize=8)
def _partition(task_spec: str, index: int, count: int, alpha: float, seed: int) -> LocalData:
    """The same split `edgeops simulate` and `edgeops train` use: train and held-out parts."""
    if not 0 <= index < count:
        raise ConfigError(f"partition-id {index} is outside 0..{count - 1}")
    task: Task = load_task(task_spec)
    data = task.load_data()
    train_parts = partition_devices(data.y_train, count, alpha, seed=seed)
    test_parts = partition_devices(data.y_test, count, alpha, seed=seed)
    return LocalData(
        data.x_train[train_parts[index]],
        data.y_train[train_parts[index]],
        data.x_test[test_parts[index]],
        data.y_test[test_parts[index]],
    )

