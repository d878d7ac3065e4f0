"""A simulated client plays its participant: base partition plus the train side of that
device's feedback store, never its eval side; the split itself is stable by prediction id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.federated.local_data import _partition, fleet_eval_data, load_local_data
from agent.telemetry.feedback_store import FeedbackStore, feedback_split
from edgeops.errors import ConfigError
from edgeops.federated.config import ClientRecipe, Participant, Participants
from server.federated.participants import write_participants

pytestmark = [pytest.mark.federated]

NUM_FEEDBACK = 50
# Pinned: the rule must never move an example to the other side between versions.
EVAL_IDS = ["p7", "p19", "p25", "p26", "p27", "p39", "p44"]


def _row(i: int) -> np.ndarray:
    return np.full(64, i / 100.0, dtype=np.float32)


def _store(path: Path, count: int = NUM_FEEDBACK) -> Path:
    store = FeedbackStore(path)
    for i in range(count):
        store.add(f"p{i}", _row(i), label=i % 10, predicted=0, now=float(i), model="digits")
    store.close()
    return path


def _manifest(tmp_path: Path, feedback: Path) -> str:
    path = tmp_path / "participants.json"
    write_participants(
        path,
        [
            Participant("device-000", "south", 0, str(tmp_path / "nobody.db")),
            Participant("device-002", "north", 2, str(feedback)),
        ],
        num_partitions=4,
    )
    return str(path)


def _ids(x: np.ndarray) -> list[int]:
    """The feedback id each appended row was made from (all its pixels are id / 100)."""
    return [round(float(v) * 100) for v in x[:, 0]]


def test_the_split_is_stable_and_holds_out_about_one_in_five() -> None:
    ids = [f"p{i}" for i in range(NUM_FEEDBACK)]

    assert [i for i in ids if feedback_split(i) == "eval"] == EVAL_IDS
    held_out = sum(feedback_split(f"x{i}") == "eval" for i in range(5000))
    assert 900 < held_out < 1100


def test_the_store_returns_each_side_and_both_sides_make_the_whole(tmp_path: Path) -> None:
    store = FeedbackStore(_store(tmp_path / "feedback.db"))

    train = store.examples(split="train")
    held_out = store.examples(split="eval")

    assert _ids(held_out.inputs) == [int(i[1:]) for i in EVAL_IDS]
    assert sorted(_ids(train.inputs) + _ids(held_out.inputs)) == list(range(NUM_FEEDBACK))
    assert len(store.examples()) == NUM_FEEDBACK
    assert _ids(store.examples(split="eval", limit=2).inputs) == [39, 44]  # the newest two
    with pytest.raises(ConfigError, match="split must be one of"):
        store.examples(split="test")  # type: ignore[arg-type]


def test_a_simulated_client_trains_on_its_partition_and_its_feedback_train_rows(
    tmp_path: Path,
) -> None:
    recipe = ClientRecipe(participants_file=_manifest(tmp_path, _store(tmp_path / "f.db")))
    node = {"partition-id": 1, "num-partitions": 2, "feedback-path": str(tmp_path / "other.db")}

    data = load_local_data(node, recipe)

    base = _partition("digits", 2, 4, 0.0, 0)
    np.testing.assert_array_equal(data.x_train[: len(base.x_train)], base.x_train)
    np.testing.assert_array_equal(data.x_test, base.x_test)
    appended = _ids(data.x_train[len(base.x_train) :])
    train_ids = [i for i in range(NUM_FEEDBACK) if f"p{i}" not in EVAL_IDS]
    assert appended == train_ids
    assert data.y_train[len(base.y_train) :].tolist() == [i % 10 for i in train_ids]


def test_the_fleet_evaluation_sees_only_the_eval_rows_and_the_cohort(tmp_path: Path) -> None:
    recipe = ClientRecipe(participants_file=_manifest(tmp_path, _store(tmp_path / "f.db")))

    device = fleet_eval_data({"partition-id": 1, "num-partitions": 2}, recipe)
    without_store = fleet_eval_data({"partition-id": 0, "num-partitions": 2}, recipe)

    assert _ids(device.x) == [int(i[1:]) for i in EVAL_IDS] and device.x.shape == (7, 64)
    assert device.y.tolist() == [int(i[1:]) % 10 for i in EVAL_IDS]
    assert device.cohort_index == 0  # "north" in ("north", "south")
    assert without_store.x.shape == (0, 64) and without_store.cohort_index == 1


def test_a_real_device_keeps_its_own_feedback_path_and_trains_on_the_train_side(
    tmp_path: Path,
) -> None:
    feedback = _store(tmp_path / "feedback.db")
    data_file = tmp_path / "local.npz"
    np.savez(data_file, x_train=np.zeros((3, 64), np.float32), y_train=np.zeros(3, np.int64))
    node = {"data-path": str(data_file), "feedback-path": str(feedback)}
    recipe = ClientRecipe(participants_file=_manifest(tmp_path, tmp_path / "ignored.db"))

    data = load_local_data(node, recipe)
    held_out = fleet_eval_data(node, recipe)

    assert _ids(data.x_train[3:]) == [i for i in range(NUM_FEEDBACK) if f"p{i}" not in EVAL_IDS]
    assert len(held_out.y) == len(EVAL_IDS) and held_out.cohort_index == -1


def test_a_node_without_a_participant_is_a_config_error(tmp_path: Path) -> None:
    recipe = ClientRecipe(participants_file=_manifest(tmp_path, tmp_path / "f.db"))

    with pytest.raises(ConfigError, match="partition-id 2 has no participant"):
        load_local_data({"partition-id": 2, "num-partitions": 3}, recipe)
    assert Participants(4, (Participant("d", "c", 1, "/x"),)).cohort_index(0) == 0
