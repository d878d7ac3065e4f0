"""Warm start: a run begins from a state_dict file (a training run's weights artifact),
and the config that names it survives Flower's flat run config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeops.errors import ConfigError
from edgeops.tasks import TrainConfig, load_task
from server.federated.config import FederatedConfig
from server.federated.participants import Participant, write_participants
from server.federated.task_model import evaluator_for, initial_weights, state_dict_from
from tests.server.federated.support import run_local

pytestmark = [pytest.mark.federated]


def _warm_weights(path: Path) -> Path:
    """A briefly trained digits model, saved the way TrainingRuns.record saves a run's."""
    task = load_task("digits")
    data = task.load_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = task.make_model()
    task.train(model, data.x_train, data.y_train, TrainConfig(epochs=3, seed=1))
    torch.save(model.state_dict(), path)
    return path


def test_round_zero_is_the_warm_models_held_out_accuracy(tmp_path: Path) -> None:
    task = load_task("digits")
    evaluate = evaluator_for(task, task.load_data())
    warm = torch.load(_warm_weights(tmp_path / "warm.pt"), weights_only=True)
    warm_metrics = evaluate([v.numpy() for v in warm.values()])
    cold_metrics = evaluate(initial_weights(task, 0)[1])
    config = FederatedConfig(
        num_clients=3, num_rounds=1, local_epochs=1, secagg=None,
        initial_weights=str(tmp_path / "warm.pt"),
    )

    result = run_local(config)

    assert result.initial_metrics["accuracy"] == pytest.approx(warm_metrics["accuracy"], abs=1e-9)
    assert result.initial_metrics["loss"] == pytest.approx(warm_metrics["loss"], rel=1e-6)
    assert warm_metrics["accuracy"] > 0.8 > cold_metrics["accuracy"]
    assert result.config["initial_weights"] == str(tmp_path / "warm.pt")


def test_a_missing_or_misfit_warm_start_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="initial_weights .* is not a file"):
        FederatedConfig(secagg=None, initial_weights=str(tmp_path / "absent.pt"))
    misfit = tmp_path / "misfit.pt"
    torch.save(torch.nn.Linear(64, 10).state_dict(), misfit)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")

    for path, message in ((misfit, "does not fit the 'digits' model"), (garbage, "not a readable")):
        config = FederatedConfig(num_clients=3, num_rounds=1, secagg=None, initial_weights=str(path))
        with pytest.raises(ConfigError, match=message):
            run_local(config)


def test_the_new_fields_round_trip_through_json_and_the_run_config(tmp_path: Path) -> None:
    manifest = tmp_path / "participants.json"
    write_participants(
        manifest,
        [Participant(f"device-{i}", "north", i, str(tmp_path / f"{i}.db")) for i in range(3)],
        num_partitions=3,
    )
    weights = tmp_path / "warm.pt"
    task = load_task("digits")
    torch.save(state_dict_from(task, initial_weights(task, 0)[1]), weights)
    config = FederatedConfig(
        num_clients=3,
        initial_weights=str(weights),
        participants_file=str(manifest),
        fleet_evaluation=True,
    )

    flat = config.run_config()
    data = config.to_json()

    assert flat["initial-weights"] == str(weights) and flat["fleet-evaluation"] is True
    assert flat["participants-file"] == str(manifest)
    assert FederatedConfig.from_run_config(flat) == config
    assert (data["initial_weights"], data["participants_file"], data["fleet_evaluation"]) == (
        str(weights), str(manifest), True
    )
    plain = FederatedConfig.from_run_config({"initial-weights": "", "participants-file": ""})
    assert plain.initial_weights is None and plain.participants_file is None
    assert "initial-weights" not in FederatedConfig().run_config()
