from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.runtime import ModelRuntime
from edgeops.errors import PayloadError, SmokeTestError, UpdateError
from tests.agent.support import (
    NUM_FEATURES,
    build_model,
    make_release,
    model_weights,
    softmax_outputs,
)


@pytest.fixture
def runtime(tmp_path: Path) -> ModelRuntime:
    weights = model_weights(1)
    path = tmp_path / "model.onnx"
    path.write_bytes(build_model(weights))
    return ModelRuntime(path, make_release(1, weights))


def test_predict_returns_probabilities(runtime: ModelRuntime) -> None:
    x = np.random.default_rng(0).uniform(0, 16, (4, NUM_FEATURES)).astype(np.float32)

    probabilities = runtime.predict(x)

    np.testing.assert_allclose(probabilities, softmax_outputs(model_weights(1), x), atol=1e-5)


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        (np.zeros((2, NUM_FEATURES), dtype=np.float64), "float32"),
        (np.zeros((2, 3), dtype=np.float32), r"shape \(n, 64\), got \(2, 3\)"),
        (np.zeros((NUM_FEATURES,), dtype=np.float32), "shape"),
        (np.zeros((0, NUM_FEATURES), dtype=np.float32), "no samples"),
        ([[0.0] * NUM_FEATURES], "numpy array"),
    ],
)
def test_bad_input_is_named(runtime: ModelRuntime, batch: object, needle: str) -> None:
    with pytest.raises(PayloadError, match=needle):
        runtime.predict(batch)  # type: ignore[arg-type]


def test_smoke_test_passes_on_own_golden_vectors(runtime: ModelRuntime) -> None:
    assert runtime.smoke_test(runtime.release.golden) < 1e-4


def test_smoke_test_reports_the_deviation(tmp_path: Path) -> None:
    weights = model_weights(1)
    path = tmp_path / "model.onnx"
    path.write_bytes(build_model(weights))
    release = make_release(1, weights, golden_weights=model_weights(2))

    with pytest.raises(SmokeTestError, match=r"off by up to [0-9.e-]+ \(atol"):
        ModelRuntime(path, release).smoke_test(release.golden)


def test_a_file_that_is_not_a_model_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not onnx")

    with pytest.raises(UpdateError, match="does not load"):
        ModelRuntime(path, make_release(1, model_weights(1)))


def test_a_release_naming_another_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(build_model(model_weights(1)))
    release = make_release(1, model_weights(1)).model_copy(update={"output_name": "logits"})

    with pytest.raises(UpdateError, match="output 'logits' not found"):
        ModelRuntime(path, release)
