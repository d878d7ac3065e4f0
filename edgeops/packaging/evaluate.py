"""Measure packaged models with onnxruntime: accuracy, fp32/int8 agreement, latency, size.

Latency is the median wall time of one single-sample `run()` on a session limited to one
intra-op thread (edge devices have few cores, and one thread keeps the numbers stable on a
busy machine), after a warm-up, timed with `time.perf_counter_ns`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edgeops.errors import PackagingError

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

logger = logging.getLogger(__name__)

MIN_LATENCY_RUNS = 200
WARMUP_RUNS = 20


@dataclass(frozen=True)
class FormatEvaluation:
    """One model file measured on the held-out split."""

    accuracy: float
    p50_latency_us: float
    size_bytes: int


@dataclass(frozen=True)
class PairEvaluation:
    fp32: FormatEvaluation
    int8: FormatEvaluation
    agreement: float  # share of held-out inputs where both models pick the same class
    # Each model's outputs on the held-out split, by format (for the monitoring reference).
    outputs: dict[str, NDArray[np.float32]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def size_ratio(self) -> float:
        return self.int8.size_bytes / self.fp32.size_bytes


def open_session(path: Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session; `threads` caps the intra-op thread pool."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime's pybind errors share no useful base class
        raise PackagingError(f"onnxruntime cannot load {Path(path).name}: {err}") from err


def run_model(path: Path, inputs: NDArray[np.float32], *, input_name: str) -> NDArray[np.float32]:
    """The model's first output for a batch of inputs (a fresh session, default options)."""
    return run_session(open_session(path), inputs, input_name=input_name)


def run_session(
    session: onnxruntime.InferenceSession, inputs: NDArray[np.float32], *, input_name: str
) -> NDArray[np.float32]:
    feed = {input_name: np.ascontiguousarray(inputs, dtype=np.float32)}
    try:
        return np.asarray(session.run(None, feed)[0])
    except Exception as err:
        raise PackagingError(f"onnxruntime failed to run the model: {err}") from err


def top1_accuracy(probabilities: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def top1_agreement(first: NDArray[np.float32], second: NDArray[np.float32]) -> float:
    """Share of rows where both outputs have the same arg-max."""
    if first.shape != second.shape:
        raise ValueError(f"output shapes differ: {first.shape} vs {second.shape}")
    return float(np.mean(np.argmax(first, axis=1) == np.argmax(second, axis=1)))


def p50_latency_us(
    path: Path,
    sample: NDArray[np.float32],
    *,
    input_name: str,
    runs: int = MIN_LATENCY_RUNS,
    warmup: int = WARMUP_RUNS,
) -> float:
    """Median latency in microseconds of one single-sample inference."""
    if runs < MIN_LATENCY_RUNS:
        raise ValueError(f"need at least {MIN_LATENCY_RUNS} timed runs, got {runs}")
    session = open_session(path, threads=1)
    feed = {input_name: np.ascontiguousarray(sample, dtype=np.float32).reshape(1, *sample.shape)}
    for _ in range(warmup):
        session.run(None, feed)
    timings_ns = np.empty(runs, dtype=np.int64)
    for index in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        timings_ns[index] = time.perf_counter_ns() - start
    return float(np.median(timings_ns)) / 1000.0


def evaluate_pair(
    fp32_path: Path,
    int8_path: Path,
    x_test: NDArray[np.float32],
    y_test: NDArray[np.int64],
    *,
    input_name: str,
    latency_runs: int = MIN_LATENCY_RUNS,
) -> PairEvaluation:
    """Measure both models on the held-out split; the fp32 model is the baseline."""
    fp32_out = run_model(fp32_path, x_test, input_name=input_name)
    int8_out = run_model(int8_path, x_test, input_name=input_name)
    results = {}
    for fmt, path, outputs in (("fp32", fp32_path, fp32_out), ("int8", int8_path, int8_out)):
        results[fmt] = FormatEvaluation(
            accuracy=top1_accuracy(outputs, y_test),
            p50_latency_us=p50_latency_us(
                path, x_test[0], input_name=input_name, runs=latency_runs
            ),
            size_bytes=Path(path).stat().st_size,
        )
    evaluation = PairEvaluation(
        fp32=results["fp32"],
        int8=results["int8"],
        agreement=top1_agreement(fp32_out, int8_out),
        outputs={"fp32": fp32_out, "int8": int8_out},
    )
    logger.info(
        "evaluated: accuracy fp32 %.4f int8 %.4f, agreement %.4f, size ratio %.3f",
        evaluation.fp32.accuracy,
        evaluation.int8.accuracy,
        evaluation.agreement,
        evaluation.size_ratio,
    )
    return evaluation
