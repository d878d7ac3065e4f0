"""Golden vectors: inputs and the outputs a released model must reproduce on a device.

The agent runs the golden inputs through a staged model before switching to it and refuses
the update if any output differs by more than `atol`. The tolerance must pass an honest model
on other hardware yet catch a wrong or corrupted one, so it is derived from measurement:

    atol = max(floor[format], SAFETY_FACTOR * observed max deviation)

where the observed deviation is the largest absolute output difference, over the golden
inputs, between the reference run (a default session, whole batch) and runs that take other
kernel paths on this machine: a fresh session, one sample at a time, one intra-op thread,
and graph optimisations switched off (for int8 that is float Dequantize/Gemm/Quantize
instead of the fused integer kernels). Floors: 1e-4 for fp32, 1e-3 for int8.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgeops.packaging.evaluate import open_session, run_session
from edgeops.schemas import GoldenVectors, ModelFormat

logger = logging.getLogger(__name__)

GOLDEN_ATOL_FLOOR: dict[str, float] = {"fp32": 1e-4, "int8": 1e-3}
SAFETY_FACTOR = 10.0


def golden_atol(fmt: ModelFormat, observed_max_deviation: float) -> float:
    """The smoke-test tolerance for a format, given the deviation seen across runs."""
    if observed_max_deviation < 0 or not np.isfinite(observed_max_deviation):
        raise ValueError(f"observed deviation must be finite and >= 0: {observed_max_deviation}")
    return max(GOLDEN_ATOL_FLOOR[fmt], SAFETY_FACTOR * observed_max_deviation)


def observed_max_deviation(
    path: Path, inputs: NDArray[np.float32], reference: NDArray[np.float32], *, input_name: str
) -> float:
    """Largest |output - reference| over runs that take different kernel paths."""
    import onnxruntime

    fresh = open_session(path)
    runs: list[NDArray[np.float32]] = [
        run_session(fresh, inputs, input_name=input_name),
        run_session(open_session(path, threads=1), inputs, input_name=input_name),
        np.concatenate([run_session(fresh, row[None], input_name=input_name) for row in inputs]),
    ]
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimised = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    runs.append(run_session(unoptimised, inputs, input_name=input_name))
    return max(float(np.max(np.abs(run - reference))) for run in runs)


def build_golden(
    path: Path, inputs: NDArray[np.float32], fmt: ModelFormat, *, input_name: str
) -> tuple[GoldenVectors, float]:
    """Golden vectors for one model file, and the deviation its atol was derived from."""
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    reference = run_session(open_session(path), inputs, input_name=input_name)
    deviation = observed_max_deviation(path, inputs, reference, input_name=input_name)
    atol = golden_atol(fmt, deviation)
    logger.info(
        "golden %s: %d vectors, observed deviation %.3g, atol %.3g",
        fmt,
        len(inputs),
        deviation,
        atol,
    )
    golden = GoldenVectors(
        # float32 -> float64 is exact, so the JSON holds the very values that were run.
        inputs=inputs.reshape(len(inputs), -1).astype(np.float64).tolist(),
        outputs=reference.reshape(len(reference), -1).astype(np.float64).tolist(),
        atol=atol,
    )
    return golden, deviation
