"""The release's monitoring reference: held-out histograms, class x confidence, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgeops.errors import PackagingError
from edgeops.ota_delta import is_auxiliary_target
from edgeops.packaging.monitoring import calibration_map, monitoring_reference
from edgeops.schemas import MonitoringReference, ReleaseInfo
from edgeops.sketches import feature_histograms_v2

pytestmark = [pytest.mark.monitor]

EDGES = [0.0, 4.0, 8.0, 12.0, 16.0]


def test_calibration_is_the_hit_rate_per_class_and_bin_with_pooled_then_midpoint_fill() -> None:
    predicted = [0, 0, 0, 1, 1]
    bins = [9, 9, 9, 9, 5]
    correct = [True, True, False, True, False]

    calibration, counts = calibration_map(predicted, bins, correct, num_classes=3)

    assert counts[0, 9] == 3 and counts[1, 9] == 1 and counts[1, 5] == 1 and counts.sum() == 5
    assert calibration[0, 9] == pytest.approx(2 / 3) and calibration[1, 9] == 1.0
    assert calibration[1, 5] == 0.0
    assert calibration[2, 9] == pytest.approx(3 / 4)  # empty cell: bin 9 pooled over classes
    assert calibration[0, 5] == 0.0  # pooled bin 5
    assert calibration[2, 2] == pytest.approx(0.25)  # empty everywhere: the bin midpoint


def test_reference_has_the_telemetry_v2_layout_and_the_held_out_accuracy() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 17, (200, 3))
    y = rng.integers(0, 2, 200)
    probs = np.where(rng.random(200) < 0.8, y, 1 - y)[:, None] == np.arange(2)
    probs = np.where(probs, 0.87, 0.13)

    ref = monitoring_reference(x, y, probs, EDGES, num_classes=2)

    assert ref.sample_count == 200
    assert ref.feature_histograms == feature_histograms_v2(x, EDGES).tolist()
    assert len(ref.feature_histograms[0]) == len(EDGES) + 1  # B + 2
    assert sum(ref.predicted_classes) == 200
    assert np.array(ref.class_confidence)[:, 8].sum() == 200  # 0.87 -> bin 8
    assert ref.accuracy == pytest.approx(np.mean(probs.argmax(1) == y))
    assert np.array(ref.calibration)[:, 8] == pytest.approx(
        [np.mean((probs.argmax(1) == y)[probs.argmax(1) == c]) for c in (0, 1)], abs=1e-4
    )


def test_mismatched_outputs_are_packaging_errors() -> None:
    with pytest.raises(PackagingError, match="held-out rows"):
        monitoring_reference(np.zeros((3, 2)), [0, 1], np.full((3, 2), 0.5), EDGES, 2)
    with pytest.raises(PackagingError, match="3 outputs"):
        monitoring_reference(np.zeros((2, 2)), [0, 1], np.full((2, 3), 0.3), EDGES, 2)


def test_an_inconsistent_reference_is_refused() -> None:
    good = monitoring_reference(np.zeros((4, 2)), [0, 1, 0, 1],
                                np.array([[0.9, 0.1]] * 4), EDGES, 2).model_dump()
    with pytest.raises(ValidationError, match="summing to sample_count"):
        MonitoringReference.model_validate({**good, "sample_count": 5})
    with pytest.raises(ValidationError, match="class_confidence must have shape"):
        MonitoringReference.model_validate({**good, "class_confidence": [[4] * 9, [0] * 9]})
    with pytest.raises(ValidationError, match="probabilities"):
        MonitoringReference.model_validate({**good, "calibration": [[1.5] * 10] * 2})


@pytest.mark.integration
def test_packaging_signs_the_reference_of_each_format_into_the_tuf_target(
    tmp_path: Path,
) -> None:
    from edgeops.packaging import package_model
    from edgeops.packaging.evaluate import run_model
    from edgeops.tasks import load_task
    from server.app.home import init_home
    from server.config.settings import ServerSettings
    from server.db.engine import close_database, open_database
    from server.pipeline.publishing import publish_package
    from server.trust.repository import TufRepository
    from tests.edgeops.packaging_support import write_digits_checkpoint

    checkpoint = write_digits_checkpoint(tmp_path / "digits.pt")
    packaged = package_model("digits", tmp_path / "package", checkpoint=checkpoint,
                             latency_runs=200)
    report = json.loads((tmp_path / "package" / "report.json").read_text())
    task = load_task("digits")
    data = task.load_data()
    for fmt in ("fp32", "int8"):
        ref = MonitoringReference.model_validate(report["release_info"][fmt]["monitoring"])
        outputs = run_model(tmp_path / "package" / f"model.{fmt}.onnx", data.x_test,
                            input_name=task.input_schema.name)
        assert ref.sample_count == len(data.x_test)
        assert ref.accuracy == pytest.approx(report["accuracy"][fmt])
        assert ref.predicted_classes == np.bincount(outputs.argmax(1), minlength=10).tolist()
        assert len(ref.feature_histograms) == 64 and len(ref.feature_histograms[0]) == 12
    assert packaged.data["release_info"]["int8"]["monitoring"] != (
        packaged.data["release_info"]["fp32"]["monitoring"])  # each format's own outputs

    settings = ServerSettings(home=tmp_path / "home", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    try:
        publish_package(settings, factory, tmp_path / "package", fmt="int8")
    finally:
        close_database(factory)
    [target] = [t for t in TufRepository(settings.tuf_dir).targets()
                if not is_auxiliary_target(t.custom)]  # not its compressed copy
    info = ReleaseInfo.from_custom(target.custom)
    assert info.monitoring is not None
    assert info.monitoring == MonitoringReference.model_validate(
        report["release_info"]["int8"]["monitoring"])
