"""The federated evaluation of the fleet's fresh labelled data: exact per-class and
per-cohort counts through the real ServerApp/ClientApp code on a LocalGrid, and, through
the real Simulation Engine, a candidate trained on drifted feedback beating its champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from agent.federated.client_app import make_client_app
from agent.telemetry.feedback_store import FeedbackStore, feedback_split
from edgeops.errors import NotFoundError
from edgeops.federated.config import ClientRecipe
from edgeops.tasks import TrainConfig, load_task
from server.federated.config import FederatedConfig
from server.federated.fleet_eval import run_fleet_evaluation, summarise
from server.federated.local_grid import LocalGrid
from server.federated.participants import Participant, write_participants
from server.federated.server_app import run_rounds
from server.federated.task_model import initial_weights

pytestmark = [pytest.mark.federated]

NUM_CLASSES = 10


def _constant(label: int) -> list[np.ndarray]:
    """Digits-model weights that predict `label` for every input."""
    _, weights = initial_weights(load_task("digits"), 0)
    weights = [np.zeros_like(w) for w in weights]
    weights[-1][label] = 10.0
    return weights


def _store(path: Path, prefix: str, labels: list[int], x: np.ndarray | None = None) -> Path:
    store = FeedbackStore(path)
    for i, label in enumerate(labels):
        row = np.full(64, 0.5, np.float32) if x is None else x[i]
        store.add(f"{prefix}{i}", row, label=label, predicted=0, now=float(i), model="digits")
    store.close()
    return path


def _eval_labels(prefix: str, labels: list[int]) -> list[int]:
    return [label for i, label in enumerate(labels) if feedback_split(f"{prefix}{i}") == "eval"]


def _counts(labels: list[int]) -> list[int]:
    return [labels.count(c) for c in range(NUM_CLASSES)]


def test_summarise_sums_counts_per_class_and_cohort_and_skips_malformed_replies() -> None:
    def reply(cohort: int, correct: dict[int, int], total: dict[int, int]) -> dict[str, int]:
        metrics = {"cohort_index": cohort}
        for c in range(3):
            metrics[f"correct_{c}"] = correct.get(c, 0)
            metrics[f"total_{c}"] = total.get(c, 0)
        return metrics

    replies = [
        reply(0, {0: 2, 1: 1}, {0: 3, 1: 1}),
        reply(1, {2: 1}, {1: 2, 2: 4}),
        reply(-1, {0: 1}, {0: 1}),
        reply(0, {}, {}),
        {**reply(0, {0: 5}, {0: 1})},  # more correct than total
        {"cohort_index": 7},
    ]

    result = summarise("candidate", replies, cohorts=("north", "south"), num_classes=3, failed=1)

    assert (result.examples, result.correct, result.accuracy) == (11, 5, 5 / 11)
    assert result.class_examples == (4, 3, 4) and result.class_recall == (0.75, 1 / 3, 0.25)
    assert result.cohort_examples == {"north": 4, "south": 6}
    assert result.cohort_accuracy == {"north": 0.75, "south": 1 / 6}
    assert (result.replied, result.failed) == (4, 3)
    empty = summarise("champion", [], cohorts=("north",), num_classes=2)
    assert empty.accuracy is None and empty.to_json()["class_recall"] == {"0": None, "1": None}


def test_fleet_evaluation_counts_are_exact_per_class_and_cohort(tmp_path: Path) -> None:
    north_labels = [i % 10 for i in range(60)]
    south_labels = [(3 * i) % 10 for i in range(40)]
    manifest = tmp_path / "participants.json"
    write_participants(
        manifest,
        [
            Participant("device-a", "north", 0, str(_store(tmp_path / "a.db", "a", north_labels))),
            Participant("device-b", "south", 1, str(_store(tmp_path / "b.db", "b", south_labels))),
            Participant("device-c", "north", 2, str(tmp_path / "no-feedback-yet.db")),
        ],
        num_partitions=3,
    )
    north = _counts(_eval_labels("a", north_labels))
    south = _counts(_eval_labels("b", south_labels))
    grid = LocalGrid(make_client_app(), 3)
    recipe = ClientRecipe(participants_file=str(manifest))

    fleet = run_fleet_evaluation(
        grid,
        {"always-3": _constant(3), "always-7": _constant(7)},
        recipe,
        cohorts=("north", "south"),
        num_classes=NUM_CLASSES,
    )

    assert [w.name for w in fleet.weight_sets] == ["always-3", "always-7"]
    for label in (3, 7):
        result = fleet.get(f"always-{label}").to_json()
        assert result["replied"] == 3 and result["failed"] == 0
        assert result["examples"] == sum(north) + sum(south) > 0
        assert result["cohort_examples"] == {"north": sum(north), "south": sum(south)}
        assert result["cohort_accuracy"] == {
            "north": north[label] / sum(north), "south": south[label] / sum(south)
        }
        assert result["accuracy"] == (north[label] + south[label]) / (sum(north) + sum(south))
        recall = {str(c): (1.0 if c == label else 0.0) if north[c] + south[c] else None
                  for c in range(NUM_CLASSES)}
        assert result["class_recall"] == recall
        assert result["class_examples"] == {str(c): north[c] + south[c] for c in range(NUM_CLASSES)}
    with pytest.raises(NotFoundError, match="no weight set 'champion'"):
        fleet.get("champion")


def _shift_right(x: np.ndarray) -> np.ndarray:
    """8x8 digits moved one pixel right (the left column goes blank)."""
    images = x.reshape(-1, 8, 8)
    shifted = np.zeros_like(images)
    shifted[:, :, 1:] = images[:, :, :-1]
    return shifted.reshape(len(x), 64)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean-data champion the retraining warm-starts from."""
    path = tmp_path_factory.mktemp("champion") / "champion.pt"
    task = load_task("digits")
    data = task.load_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = task.make_model()
    task.train(model, data.x_train, data.y_train, TrainConfig(epochs=10, seed=0))
    torch.save(model.state_dict(), path)
    return path


def _drifted_fleet(tmp_path: Path, num_devices: int) -> Path:
    """Each device's feedback: a slice of the held-out images, drifted, with true labels."""
    data = load_task("digits").load_data()
    drifted = _shift_right(data.x_test)
    slices = np.array_split(np.arange(len(drifted)), num_devices)
    participants = [
        Participant(
            f"device-{i:03d}",
            "drifted" if i else "steady",
            i,
            str(_store(tmp_path / f"{i}.db", f"d{i}-", data.y_test[rows].tolist(), drifted[rows])),
        )
        for i, rows in enumerate(slices)
    ]
    manifest = tmp_path / "participants.json"
    write_participants(manifest, participants, num_partitions=num_devices)
    return manifest


def test_run_rounds_scores_candidate_and_champion_on_the_fleets_eval_rows(
    tmp_path: Path, champion: Path
) -> None:
    manifest = _drifted_fleet(tmp_path, 3)
    config = FederatedConfig(
        num_clients=3, num_rounds=1, local_epochs=1, secagg=None,
        initial_weights=str(champion), participants_file=str(manifest), fleet_evaluation=True,
    )
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})

    result = run_rounds(LocalGrid(make_client_app(), 3), context, config)

    fleet = result.fleet_evaluation
    assert fleet is not None and set(fleet["weight_sets"]) == {"candidate", "champion"}
    assert fleet["cohorts"] == ["drifted", "steady"]
    held_out = sum(
        feedback_split(f"d{i}-{j}") == "eval" for i, n in enumerate((150, 150, 150)) for j in range(n)
    )
    task = load_task("digits")
    model = task.make_model()
    model.load_state_dict(torch.load(champion, weights_only=True))
    drifted = _shift_right(task.load_data().x_test)
    eval_rows = [
        row
        for i, rows in enumerate(np.array_split(np.arange(len(drifted)), 3))
        for j, row in enumerate(rows)
        if feedback_split(f"d{i}-{j}") == "eval"
    ]
    expected = task.evaluate(model, drifted[eval_rows], task.load_data().y_test[eval_rows])
    champion_json = fleet["weight_sets"]["champion"]
    assert champion_json["examples"] == held_out == len(eval_rows)
    assert champion_json["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result.metrics_json()["fleet_evaluation"] == fleet


@pytest.mark.integration  # Ray's local services listen on loopback sockets
def test_in_the_simulation_engine_the_candidate_beats_the_champion_on_drifted_feedback(
    tmp_path: Path, champion: Path
) -> None:
    from server.federated.driver import EngineResources, run_simulation_engine

    config = FederatedConfig(
        num_clients=3, num_rounds=1, local_epochs=5, secagg=None,
        initial_weights=str(champion),
        participants_file=str(_drifted_fleet(tmp_path, 3)),
        fleet_evaluation=True,
    )

    result = run_simulation_engine(config, resources=EngineResources(num_cpus=2, client_cpus=1.0))

    fleet = result.fleet_evaluation
    assert fleet is not None
    candidate, before = fleet["weight_sets"]["candidate"], fleet["weight_sets"]["champion"]
    assert candidate["examples"] == before["examples"] > 50
    assert before["accuracy"] < 0.75, "the drift must hurt the champion for this to show much"
    assert candidate["accuracy"] > before["accuracy"] + 0.1
    assert candidate["cohort_accuracy"]["drifted"] > before["cohort_accuracy"]["drifted"]
    assert result.initial_metrics["accuracy"] > 0.9  # the warm start: the clean champion
