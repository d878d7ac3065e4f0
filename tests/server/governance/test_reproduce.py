"""`edgeops model reproduce` on real parts: a real SQLite registry, artifact store and TUF
repository (init_home), a digits training run recorded from real torch weights, real ONNX
export and static int8 quantization, published as the server publishes."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError, TrustError
from edgeops.exit_codes import ExitCode
from edgeops.packaging.source import file_sha256
from edgeops.schemas import ReleaseInfo
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.governance.reproduce import compare_artifact, reproduce_release
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry
from tests.server.helpers import golden_for, make_package, write_onnx_model

pytestmark = [pytest.mark.governance, pytest.mark.integration]

TASK = "digits"


def _record_run(settings: ServerSettings, session_factory: sessionmaker) -> int:
    """A succeeded training run with real digits weights in the store (one epoch)."""
    import torch

    from edgeops.packaging.lineage import code_version
    from edgeops.packaging.source import train_model
    from edgeops.tasks import TrainConfig, load_task
    from server.db.tables import TrainingRun

    task = load_task(TASK)
    dataset = task.load_data()
    buffer = io.BytesIO()
    torch.save(train_model(task, dataset, TrainConfig(epochs=1)).model.state_dict(), buffer)
    sha256, _ = ArtifactStore(settings.artifacts_dir).put_bytes(buffer.getvalue())
    with session_factory.begin() as session:
        row = TrainingRun(task=TASK, kind="federated", status="succeeded", config={},
                          metrics={}, weights_sha256=sha256, code_version=code_version()[:64],
                          data_fingerprint=dataset.fingerprint())
        session.add(row)
        session.flush()
        return int(row.id)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server home holding digits v1 (from a recorded run, its package kept beside the
    home) and tiny v1 (a package with no training run)."""
    from server.app.home import init_home
    from server.pipeline.steps import (
        PackageOptions,
        load_training_run,
        package_run,
        publish_release,
    )

    root = tmp_path_factory.mktemp("reproduce")
    settings = ServerSettings(home=root / "home", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    try:
        run = load_training_run(settings, factory, _record_run(settings, factory))
        package_run(run, root / "package", PackageOptions(accuracy_budget_pp=100.0))
        publish_release(settings, factory, root / "package", "int8")
        publish_release(settings, factory, make_package(root / "tiny", model="tiny"), "int8")
    finally:
        close_database(factory)
    return root


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template, safe to tamper with."""
    shutil.copytree(template, tmp_path / "copy")
    return tmp_path / "copy" / "home"


@pytest.fixture
def settings(home: Path) -> ServerSettings:
    return ServerSettings(home=home, http_port=0)


@pytest.fixture
def factory(settings: ServerSettings) -> Iterator[sessionmaker]:
    made = open_database(settings.resolved_database_url)
    yield made
    close_database(made)


def _stored_path(settings: ServerSettings, factory: sessionmaker, fmt: str) -> Path:
    store = ArtifactStore(settings.artifacts_dir)
    record = Registry(factory, store).get_version(TASK, 1, fmt)  # type: ignore[arg-type]
    return store.path_for(record.artifact_sha256)


def _scale_weights(path: Path, factor: float) -> None:
    """Rewrite an fp32 ONNX file in place with its first float initializer scaled."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    first = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(factor),
                                           first.name))
    path.chmod(0o644)
    onnx.save(model, str(path))


# reproduce_release ------------------------------------------------------------------------


def test_a_release_from_a_recorded_run_rebuilds_bit_identical(
    settings: ServerSettings, factory: sessionmaker
) -> None:
    report = reproduce_release(settings, factory, TASK, 1)

    assert report.verdict == "bit-identical"
    assert report.release == "digits/1/model.int8.onnx"
    assert report.code_version_matches and report.notes == ()
    assert report.recipe.quantization.method == "static"
    assert report.recipe.source.startswith("inferred from the registered int8 artifact")
    for fmt in ("fp32", "int8"):
        item = report.artifacts[fmt]
        assert item.verdict == "bit-identical"
        assert item.rebuilt_sha256 == item.registered_sha256 == item.stored_sha256
        assert item.max_abs_diff is None and item.reasons == ()
    assert report.artifacts["int8"].signed_sha256 == report.artifacts["int8"].registered_sha256
    assert report.artifacts["fp32"].signed_sha256 is None  # only int8 was signed


def test_the_recipe_is_read_from_a_report_whose_hashes_are_the_releases(
    settings: ServerSettings, factory: sessionmaker, home: Path, tmp_path: Path
) -> None:
    package_report = home.parent / "package" / "report.json"

    report = reproduce_release(settings, factory, TASK, 1, report_path=package_report,
                               out_dir=tmp_path / "rebuilt")

    assert report.verdict == "bit-identical"
    assert report.recipe.source == str(package_report)
    recorded = json.loads(package_report.read_text())["quantization"]["calibration"]
    assert report.recipe.calibration_samples == recorded["samples"] > 0
    assert file_sha256(tmp_path / "rebuilt" / "model.int8.onnx") == json.loads(
        package_report.read_text())["sha256"]["int8"]

    foreign = home.parent / "tiny" / "report.json"
    with pytest.raises(ConfigError, match="is not this release's report"):
        reproduce_release(settings, factory, TASK, 1, report_path=foreign)


def test_a_pipeline_release_reads_its_recipe_from_the_runs_package(
    settings: ServerSettings, factory: sessionmaker, home: Path
) -> None:
    from server.db.tables import PipelineRun

    with factory.begin() as session:
        session.add(PipelineRun(id=4, model=TASK, status="promoted", policy={}, trigger={},
                                training_run_id=1, created_by="test", created_at=0.0,
                                updated_at=0.0, state_entered_at=0.0))
    shutil.copytree(home.parent / "package", settings.pipeline_dir / "4" / "package")

    report = reproduce_release(settings, factory, TASK, 1)

    assert report.recipe.source == "report.json of pipeline run 4"
    assert report.recipe.calibration_samples is not None and report.verdict == "bit-identical"


def test_a_tampered_artifact_in_the_store_is_reported_as_differs(
    settings: ServerSettings, factory: sessionmaker
) -> None:
    stored = _stored_path(settings, factory, "fp32")
    _scale_weights(stored, 1.5)

    report = reproduce_release(settings, factory, TASK, 1)

    assert report.verdict == "differs"
    fp32, int8 = report.artifacts["fp32"], report.artifacts["int8"]
    assert int8.verdict == "bit-identical"
    assert fp32.verdict == "differs"
    assert fp32.rebuilt_sha256 == fp32.registered_sha256 != fp32.stored_sha256
    assert "modified in the store" in fp32.reasons[0]
    assert fp32.max_abs_diff is not None and fp32.max_abs_diff > fp32.atol
    assert fp32.recorded_golden_max_abs_diff is not None
    assert fp32.recorded_golden_max_abs_diff <= fp32.atol  # the rebuild matches the record


def test_a_tampered_checkpoint_is_a_trust_failure(
    settings: ServerSettings, factory: sessionmaker
) -> None:
    from server.db.tables import TrainingRun

    with factory() as session:
        weights = session.get(TrainingRun, 1).weights_sha256
    path = ArtifactStore(settings.artifacts_dir).path_for(str(weights))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"\0")

    with pytest.raises(TrustError, match="checkpoint of training run 1 .* no longer matches"):
        reproduce_release(settings, factory, TASK, 1)


def test_a_release_with_no_recorded_checkpoint_says_so(
    settings: ServerSettings, factory: sessionmaker
) -> None:
    with pytest.raises(ConfigError, match=r"tiny v1 has no recorded checkpoint.*centralized"):
        reproduce_release(settings, factory, "tiny", 1)
    with pytest.raises(NotFoundError, match="no version 7"):
        reproduce_release(settings, factory, TASK, 7)


# compare_artifact (no rebuild: two small ONNX files) --------------------------------------


def _info(path: Path) -> ReleaseInfo:
    from tests.server.helpers import INPUT_SCHEMA, NUM_CLASSES

    return ReleaseInfo.model_validate({
        "model": "tiny", "version": 1, "format": "fp32", "input": INPUT_SCHEMA,
        "output_name": "probabilities", "num_classes": NUM_CLASSES, "golden": golden_for(path)})


def test_same_weights_in_other_bytes_are_equivalent_within_tolerance(tmp_path: Path) -> None:
    import onnx

    rebuilt, registered = tmp_path / "rebuilt.onnx", tmp_path / "registered.onnx"
    write_onnx_model(rebuilt, seed=3)
    model = onnx.load(str(rebuilt))
    model.producer_name = "another exporter"
    onnx.save(model, str(registered))

    item = compare_artifact("fp32", rebuilt, registered, file_sha256(registered),
                            file_sha256(registered), _info(registered))

    assert item.verdict == "equivalent within tolerance"
    assert item.rebuilt_sha256 != item.registered_sha256
    assert item.max_abs_diff == 0.0 and item.argmax_agreement == 1.0
    assert item.golden_count == 3 and item.reasons[0].startswith("the rebuilt file's sha256")


def test_other_weights_differ_with_the_numbers(tmp_path: Path) -> None:
    rebuilt, registered = tmp_path / "rebuilt.onnx", tmp_path / "registered.onnx"
    write_onnx_model(rebuilt, seed=3)
    write_onnx_model(registered, seed=4)

    item = compare_artifact("fp32", rebuilt, registered, file_sha256(registered), None,
                            _info(registered))

    assert item.verdict == "differs"
    assert item.max_abs_diff is not None and item.max_abs_diff > item.atol
    assert item.argmax_agreement is not None and item.argmax_agreement < 1.0
    assert any(reason.startswith("golden outputs differ by up to") for reason in item.reasons)


def test_a_missing_stored_file_differs(tmp_path: Path) -> None:
    rebuilt = tmp_path / "rebuilt.onnx"
    write_onnx_model(rebuilt, seed=3)

    item = compare_artifact("fp32", rebuilt, None, file_sha256(rebuilt), None, _info(rebuilt))

    assert item.verdict == "differs" and item.stored_sha256 is None
    assert item.reasons[0] == "the artifact store has no file for the registered sha256"


# the CLI ----------------------------------------------------------------------------------


def _edgeops(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from edgeops.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_the_cli_prints_the_report_as_json_and_exits_by_verdict(
    home: Path, settings: ServerSettings, factory: sessionmaker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _edgeops(capsys, "model", "reproduce", TASK, "1", "--home", str(home),
                            "--json")

    assert code == ExitCode.OK
    data: dict[str, Any] = json.loads(out)
    assert set(data) == {"model", "version", "release", "task", "verdict", "checkpoint",
                         "code_version", "recipe", "artifacts", "notes"}
    assert (data["model"], data["version"], data["verdict"]) == (TASK, 1, "bit-identical")
    assert data["checkpoint"]["training_run_id"] == 1
    assert data["code_version"]["matches"] is True
    assert data["recipe"]["method"] == "static"
    assert set(data["artifacts"]) == {"fp32", "int8"}
    assert data["artifacts"]["int8"]["rebuilt_sha256"] == data["artifacts"]["int8"]["signed_sha256"]

    _scale_weights(_stored_path(settings, factory, "fp32"), 1.5)
    code, out, _ = _edgeops(capsys, "model", "reproduce", TASK, "1", "--home", str(home))

    assert code == ExitCode.TRUST
    assert out.startswith("digits v1 (digits/1/model.int8.onnx): differs")
    assert "fp32: differs" in out and "int8: bit-identical" in out


def test_the_cli_exit_codes_for_no_checkpoint_and_unknown_versions(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _edgeops(capsys, "model", "reproduce", "tiny", "1", "--home", str(home))
    assert code == ExitCode.CONFIG and "no recorded checkpoint" in err

    code, _, err = _edgeops(capsys, "model", "reproduce", TASK, "9", "--home", str(home))
    assert code == ExitCode.NOT_FOUND and "no version 9" in err
