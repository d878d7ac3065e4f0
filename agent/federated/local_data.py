"""A device's local data: a file the operator gives the SuperNode, or (in simulation) the
partition of the task's dataset that this virtual device owns, plus the train side of the
labelled examples the agent's feedback store holds, appended to the training rows.

Where the feedback store is: a real device names it in its node config (`feedback-path`);
a simulated device (`partition-id` k) whose run has a participants manifest plays
participant k and uses that device's base partition and feedback file. The eval side of
the store is what the fleet evaluation scores (`fleet_eval_data`); it is never trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.telemetry.feedback_store import FeedbackSplit, FeedbackStore, LabelledExamples
from edgeops.errors import ConfigError
from edgeops.federated.config import ClientRecipe, Participants, read_participants
from edgeops.tasks import Task, load_task, partition_devices

__all__ = ["FleetEvalData", "LocalData", "add_feedback", "fleet_eval_data", "load_local_data"]

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


@dataclass(frozen=True)
class FleetEvalData:
    """The feedback eval rows of this device, and its index into the sorted cohorts
    (-1: a device outside any participants manifest)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    cohort_index: int


def partition_id(node_config: Mapping[str, Any]) -> int:
    """The simulated partition of this node, or -1 for a device with its own data file."""
    return int(node_config.get(PARTITION_ID_KEY, -1))


def load_local_data(node_config: Mapping[str, Any], recipe: ClientRecipe) -> LocalData:
    """`data-path` (an .npz with x_train, y_train and optionally x_test, y_test) if the
    SuperNode was given one, else partition `partition-id` of `num-partitions`; with
    `feedback-path`, the train side of the device's labelled feedback joins the training
    rows. A simulated node of a run with a participants manifest plays its participant:
    base partition `partition` of `num_partitions` plus that device's feedback train rows."""
    participants = _participants(node_config, recipe)
    if participants is not None:
        participant = participants.at(partition_id(node_config))
        base = _partition(
            recipe.task,
            participant.partition,
            participants.num_partitions,
            recipe.alpha,
            recipe.partition_seed,
        )
        return add_feedback(base, Path(participant.feedback_path), split="train",
                            until=participants.feedback_until)
    data = _base_data(node_config, recipe)
    if FEEDBACK_PATH_KEY in node_config:
        data = add_feedback(data, Path(str(node_config[FEEDBACK_PATH_KEY])), split="train")
    return data


def fleet_eval_data(node_config: Mapping[str, Any], recipe: ClientRecipe) -> FleetEvalData:
    """The eval side of this device's feedback store (empty without a store), shaped as the
    task's input rows, and the device's cohort index from the participants manifest."""
    task = load_task(recipe.task)
    participants = _participants(node_config, recipe)
    path: Path | None = None
    cohort_index = -1
    until = participants.feedback_until if participants is not None else None
    if participants is not None:
        index = partition_id(node_config)
        path, cohort_index = Path(participants.at(index).feedback_path), participants.cohort_index(index)
    elif FEEDBACK_PATH_KEY in node_config:
        path = Path(str(node_config[FEEDBACK_PATH_KEY]))
    row_shape = tuple(int(d) for d in task.input_schema.shape[1:] if d is not None)
    examples = _read_feedback(path, "eval", until) if path is not None else None
    if path is None or examples is None or not len(examples):
        return FleetEvalData(
            np.zeros((0, *row_shape), np.float32), np.zeros(0, np.int64), cohort_index
        )
    return FleetEvalData(_rows(examples, row_shape, path), examples.labels, cohort_index)


def add_feedback(
    data: LocalData, path: Path, *, split: FeedbackSplit | None = None,
    until: float | None = None,
) -> LocalData:
    """`data` with the feedback store's labelled examples (only the `split` side, and only
    those labelled by `until`, if given) appended to its training rows (unchanged when the
    store does not exist or is empty)."""
    examples = _read_feedback(path, split, until)
    if examples is None or not len(examples):
        return data
    x = _rows(examples, data.x_train.shape[1:], path)
    return LocalData(
        np.concatenate([data.x_train, x]),
        np.concatenate([data.y_train, examples.labels]),
        data.x_test,
        data.y_test,
    )


def _read_feedback(
    path: Path, split: FeedbackSplit | None, until: float | None = None
) -> LabelledExamples | None:
    if not path.exists():
        return None
    store = FeedbackStore(path)
    try:
        return store.examples(split=split, until=until)
    finally:
        store.close()


def _rows(examples: LabelledExamples, row_shape: tuple[int, ...], path: Path) -> NDArray[np.float32]:
    if int(np.prod(examples.inputs.shape[1:])) != int(np.prod(row_shape)):
        raise ConfigError(
            f"feedback examples in {path} have shape {examples.inputs.shape[1:]}, "
            f"the local data {row_shape}"
        )
    return examples.inputs.reshape(len(examples), *row_shape)


def _participants(node_config: Mapping[str, Any], recipe: ClientRecipe) -> Participants | None:
    """The run's manifest, for a simulated node (one with a partition-id) only."""
    if not recipe.participants_file or PARTITION_ID_KEY not in node_config:
        return None
    return read_participants(recipe.participants_file)


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

