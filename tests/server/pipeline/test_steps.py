"""The pipeline's steps on real parts: a real federated run (Flower's ServerApp and
ClientApps in-process), a real SQLite registry and TUF repository (init_home), real
ONNX export and int8 quantization, and rollouts created in the real store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError, QuantizationGateError
from edgeops.ota_delta import is_auxiliary_target
from server.config.settings import ServerSettings
from server.db.tables import Device, TrainingRun
from server.federated.config import FederatedConfig
from server.federated.result import FederatedResult
from server.pipeline.steps import (
    PackageOptions,
    TrainedRun,
    load_training_run,
    package_run,
    publish_release,
    record_training_run,
    rollout_summary,
    start_rollout,
)
from server.rollouts import RolloutConflictError, RolloutPolicy, RolloutSpec
from server.trust.repository import TufRepository

pytestmark = [pytest.mark.pipeline, pytest.mark.integration]

TASK = "digits"


@pytest.fixture(scope="module")
def federated_result() -> FederatedResult:
    """One small real federated round (3 clients, plain FedAvg), shared by the module."""
    from tests.server.federated.support import run_local

    return run_local(FederatedConfig(task=TASK, num_clients=3, num_rounds=1, local_epochs=1,
                                     secagg=None))


@pytest.fixture
def trained_run(
    server_settings: ServerSettings, session_factory: sessionmaker,
    federated_result: FederatedResult,
) -> TrainedRun:
    return record_training_run(
        server_settings, session_factory, TASK, federated_result, datetime.now(UTC)
    )


def _add_devices(session_factory: sessionmaker, count: int) -> list[str]:
    ids = [f"device-{i:03d}" for i in range(count)]
    with session_factory.begin() as session:
        session.add_all(Device(device_id=i, online=True, state="running") for i in ids)
    return ids


# record_training_run / load_training_run ------------------------------------------------


def test_a_recorded_run_has_its_weights_in_the_artifact_store(
    server_settings: ServerSettings, session_factory: sessionmaker, trained_run: TrainedRun,
    federated_result: FederatedResult,
) -> None:
    assert trained_run.record.status == "succeeded"
    assert trained_run.task == TASK
    assert trained_run.weights.is_file()
    assert trained_run.weights.parent == server_settings.artifacts_dir / "sha256"
    assert trained_run.weights.name == trained_run.record.weights_sha256
    assert trained_run.record.data_fingerprint == federated_result.data_fingerprint
    assert trained_run.record.drift_reference is not None

    loaded = load_training_run(server_settings, session_factory, trained_run.id)

    assert loaded == trained_run


def test_loading_an_unknown_run_names_it(
    server_settings: ServerSettings, session_factory: sessionmaker
) -> None:
    with pytest.raises(NotFoundError, match="training run 42 is not in the registry"):
        load_training_run(server_settings, session_factory, 42)


def test_a_run_without_final_weights_cannot_be_packaged(
    server_settings: ServerSettings, session_factory: sessionmaker
) -> None:
    with session_factory.begin() as session:
        row = TrainingRun(task=TASK, kind="federated", status="failed", weights_sha256=None)
        session.add(row)
        session.flush()
        run_id = row.id

    with pytest.raises(ConfigError, match=rf"training run {run_id} has no final weights \(status failed\)"):
        load_training_run(server_settings, session_factory, run_id)


# package_run -> publish_release -> start_rollout ------------------------------------------


def test_a_run_goes_through_package_publish_and_rollout(
    server_settings: ServerSettings, session_factory: sessionmaker, trained_run: TrainedRun,
    tmp_path: Path,
) -> None:
    out = tmp_path / "package"
    steps_seen: list[str] = []

    report = package_run(trained_run, out, PackageOptions(accuracy_budget_pp=100.0),
                         progress=steps_seen.append)

    assert report.out_dir == out and report.int8_path.is_file() and report.fp32_path.is_file()
    on_disk = json.loads(report.report_path.read_text())
    assert on_disk["lineage"]["training_run_id"] == trained_run.id
    assert on_disk["lineage"]["data_fingerprint"] == trained_run.record.data_fingerprint
    assert on_disk["release_info"]["int8"]["drift_reference"] == trained_run.record.drift_reference
    assert any("quantizing" in step for step in steps_seen)

    released = publish_release(server_settings, session_factory, out)

    assert (released.model, released.version, released.format) == ("digits", 1, "int8")
    [target] = [t for t in TufRepository(server_settings.tuf_dir).targets()
                if not is_auxiliary_target(t.custom)]  # not its compressed copy
    assert target.path == released.target_path

    ids = _add_devices(session_factory, 4)
    policy = RolloutPolicy(soak_s=1.0, device_timeout_s=30.0)

    started = start_rollout(session_factory, RolloutSpec(target=released.target_path,
                                                         policy=policy), "tester")

    assert (started.status, started.target, started.devices) == ("running", released.target_path, 4)
    assert started.created_by == "tester" and started.policy == policy.to_json()
    assert [w.devices for w in started.waves] == [1, 1, 1, 1]  # each wave adds a device
    assert rollout_summary(session_factory, started.id) == started
    assert len(ids) == sum(w.devices for w in started.waves)


def test_packaging_a_run_passes_calibration_and_budget_to_the_gate(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    out = tmp_path / "package"
    zeros = np.zeros((64, 64), dtype=np.float32)  # calibration that ruins static int8

    with pytest.raises(QuantizationGateError, match="budget of 0.00 pp"):
        package_run(trained_run, out, PackageOptions(accuracy_budget_pp=0.0),
                    calibration_override=zeros)
    assert not out.exists() or list(out.iterdir()) == []


def test_publishing_refuses_an_unknown_format(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="release format must be int8 or fp32, got 'fp16'"):
        publish_release(server_settings, session_factory, package_dir, "fp16")  # type: ignore[arg-type]
    assert TufRepository(server_settings.tuf_dir).targets() == []


# start_rollout refusals: the same as the API's --------------------------------------------


@pytest.fixture
def release_target(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> str:
    return publish_release(server_settings, session_factory, package_dir).target_path


def test_a_rollout_of_an_unknown_release_is_refused(session_factory: sessionmaker) -> None:
    _add_devices(session_factory, 2)

    with pytest.raises(NotFoundError, match="no release has target path 'digits/9/model.int8.onnx'"):
        start_rollout(session_factory, RolloutSpec(target="digits/9/model.int8.onnx"), "tester")


def test_a_rollout_that_selects_no_device_is_refused(
    session_factory: sessionmaker, release_target: str
) -> None:
    with pytest.raises(ConfigError, match="no device in the fleet: nothing to roll out to"):
        start_rollout(session_factory, RolloutSpec(target=release_target), "tester")


def test_a_second_active_rollout_for_the_fleet_is_refused(
    session_factory: sessionmaker, release_target: str
) -> None:
    _add_devices(session_factory, 3)
    first = start_rollout(session_factory, RolloutSpec(target=release_target), "tester")

    with pytest.raises(RolloutConflictError, match=f"rollout {first.id} of {release_target}"):
        start_rollout(session_factory, RolloutSpec(target=release_target), "tester")
    assert rollout_summary(session_factory, first.id).status == "running"


def test_the_summary_of_an_unknown_rollout_names_it(session_factory: sessionmaker) -> None:
    with pytest.raises(NotFoundError, match="no rollout 7"):
        rollout_summary(session_factory, 7)
