"""One loaded model: an onnxruntime CPU session plus the release that describes it."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np

from edgeops.errors import (
    EdgeOpsError,
    MissingDependencyError,
    PayloadError,
    SmokeTestError,
    UpdateError,
)
from edgeops.schemas import GoldenVectors, ReleaseInfo

logger = logging.getLogger(__name__)

# `platform.machine()` names of the CPUs onnxruntime publishes wheels for (README: platforms).
SUPPORTED_MACHINES = {
    "x86_64": "x86-64",
    "amd64": "x86-64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}


def onnxruntime_import_error(err: ImportError, machine: str) -> MissingDependencyError:
    """Why onnxruntime does not import here, and what to do: on a CPU it has no wheels for
    (32-bit ARM, i686, ...) installing again cannot help, so say which platform to use."""
    if machine.lower() in SUPPORTED_MACHINES:
        return MissingDependencyError(
            f"onnxruntime does not import ({err}); install the agent with: "
            "pip install 'edgeops[agent]'"
        )
    return MissingDependencyError(
        f"the EdgeOps agent does not run on this {machine or 'unknown'} machine: onnxruntime, "
        "its inference engine, publishes no wheels for it (only x86-64 and aarch64). "
        "On a Raspberry Pi or another ARM board install a 64-bit (aarch64) OS, e.g. "
        "Raspberry Pi OS 64-bit, and the agent there; see 'Supported platforms' in the README."
    )


try:
    import onnxruntime as ort
except ImportError as _err:
    raise onnxruntime_import_error(_err, platform.machine()) from _err


class NoModelError(EdgeOpsError):
    """The agent has no model to serve yet (HTTP 503)."""


class ModelRuntime:
    """An InferenceSession loaded from a slot, checked against its ReleaseInfo.

    `predict` is the hot path: it checks type, dtype and shape and calls `session.run`,
    nothing else. Bad input raises PayloadError naming what was wrong.
    """

    def __init__(
        self, model_path: Path, release: ReleaseInfo, *, intra_op_threads: int = 1
    ) -> None:
        self.release = release
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise UpdateError(f"model {self.model_path} does not load: {err}") from err
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        schema = release.input
        if schema.name not in inputs:
            raise UpdateError(
                f"model input {schema.name!r} not found; the model has {sorted(inputs)}"
            )
        if release.output_name not in outputs:
            raise UpdateError(
                f"model output {release.output_name!r} not found; the model has {sorted(outputs)}"
            )
        self._input_name = schema.name
        self._output_names = [release.output_name]
        self._feature_shape = tuple(schema.shape[1:])
        self._ndim = len(schema.shape)
        self._dtype = np.dtype(schema.dtype)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self._feature_shape  # type: ignore[return-value]

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    def check_input(self, batch: np.ndarray) -> None:
        """Raise PayloadError unless `batch` is a non-empty (n, *features) array of the dtype."""
        if not isinstance(batch, np.ndarray):
            raise PayloadError(f"inputs must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != self._dtype:
            raise PayloadError(f"inputs must be {self._dtype}, got {batch.dtype}")
        if batch.ndim != self._ndim or batch.shape[1:] != self._feature_shape:
            expected = ("n", *self._feature_shape)
            raise PayloadError(
                f"inputs must have shape ({', '.join(map(str, expected))}), got {batch.shape}"
            )
        if batch.shape[0] == 0:
            raise PayloadError("inputs hold no samples")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for `batch`, shape (n, num_classes)."""
        if (
            batch.__class__ is not np.ndarray
            or batch.dtype != self._dtype
            or batch.shape[1:] != self._feature_shape
            or batch.ndim != self._ndim
            or not batch.shape[0]
        ):
            self.check_input(batch)  # raises with the precise reason
        return self._session.run(self._output_names, {self._input_name: batch})[0]

    def smoke_test(self, golden: GoldenVectors) -> float:
        """Run the golden inputs; raise SmokeTestError if any output is off by more than atol.

        Returns the maximum absolute deviation.
        """
        inputs = np.asarray(golden.inputs, dtype=self._dtype).reshape(-1, *self._feature_shape)
        expected = np.asarray(golden.outputs, dtype=np.float64)
        try:
            actual = np.asarray(self.predict(inputs), dtype=np.float64)
        except PayloadError as err:
            raise SmokeTestError(f"golden inputs do not fit the model: {err}") from err
        except Exception as err:  # onnxruntime failure on the staged model
            raise SmokeTestError(f"model failed on the golden inputs: {err}") from err
        if actual.shape != expected.shape:
            raise SmokeTestError(
                f"golden outputs have shape {expected.shape}, the model gives {actual.shape}"
            )
        deviation = float(np.max(np.abs(actual - expected)))
        if not deviation <= golden.atol:  # also catches NaN
            raise SmokeTestError(
                f"golden outputs off by up to {deviation:.3g} (atol {golden.atol:g})"
            )
        return deviation
