"""The release's monitoring reference: what the exported model does on the held-out split.

Pure: takes the held-out inputs, labels and the exported model's probabilities (the int8
session's outputs for the int8 release, fp32's for fp32) and returns the
`MonitoringReference` signed with the release. Calibration is histogram binning per
predicted class over the top-1 confidence bins; a cell with no held-out prediction takes the
bin's value pooled over classes, and a bin empty for every class takes its midpoint.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from edgeops.errors import PackagingError
from edgeops.schemas import CALIBRATION_BINS, MonitoringReference
from edgeops.sketches import confidence_bins, feature_histograms_v2

__all__ = ["CALIBRATION_DECIMALS", "calibration_map", "monitoring_reference"]

# Calibration values are rounded: they travel as strings in signed TUF metadata.
CALIBRATION_DECIMALS = 4


def calibration_map(
    predicted: ArrayLike, bins: ArrayLike, correct: ArrayLike, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, counts), each (num_classes, 10): P(correct | class, bin) by binning."""
    pred = np.asarray(predicted, dtype=np.int64)
    cell = pred * CALIBRATION_BINS + np.asarray(bins, dtype=np.int64)
    size = num_classes * CALIBRATION_BINS
    counts = np.bincount(cell, minlength=size).reshape(num_classes, CALIBRATION_BINS)
    hits = np.bincount(cell, weights=np.asarray(correct, dtype=np.float64), minlength=size)
    hits = hits.reshape(num_classes, CALIBRATION_BINS)
    pooled_counts, pooled_hits = counts.sum(axis=0), hits.sum(axis=0)
    midpoints = (np.arange(CALIBRATION_BINS) + 0.5) / CALIBRATION_BINS
    pooled = np.where(pooled_counts > 0, pooled_hits / np.maximum(pooled_counts, 1), midpoints)
    calibration = np.where(counts > 0, hits / np.maximum(counts, 1), pooled[None, :])
    return calibration, counts


def monitoring_reference(
    inputs: ArrayLike,
    labels: ArrayLike,
    probabilities: ArrayLike,
    bin_edges: ArrayLike,
    num_classes: int,
) -> MonitoringReference:
    """The monitoring reference of a model from its outputs on the held-out split."""
    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(y) or x.shape[0] != len(y) or not len(y):
        raise PackagingError(
            f"monitoring reference needs matching held-out rows: inputs {x.shape}, "
            f"labels {y.shape}, probabilities {probs.shape}"
        )
    if probs.shape[1] != num_classes:
        raise PackagingError(
            f"model has {probs.shape[1]} outputs, the task {num_classes} classes"
        )
    predicted = probs.argmax(axis=1)
    bins = confidence_bins(probs.max(axis=1))
    correct = predicted == y
    calibration, counts = calibration_map(predicted, bins, correct, num_classes)
    return MonitoringReference(
        sample_count=len(y),
        feature_histograms=feature_histograms_v2(x, bin_edges).tolist(),
        predicted_classes=np.bincount(predicted, minlength=num_classes).tolist(),
        class_confidence=counts.tolist(),
        calibration=np.round(calibration, CALIBRATION_DECIMALS).tolist(),
        calibration_counts=counts.tolist(),
        accuracy=float(correct.mean()),
    )
