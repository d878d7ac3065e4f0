"""Label-free accuracy estimate (CBPE-style) from class x confidence counts.

A window's (predicted class x top-1 confidence bin) counts, weighted by the release's
calibration map P(correct | class, bin), give the expected share of correct predictions.
The naive estimate (mean confidence from the same counts, at bin midpoints) is kept for
comparison; realised accuracy comes from the confusion counts of labelled predictions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from edgeops.sketches import CONFIDENCE_BINS

__all__ = ["estimated_accuracy", "naive_accuracy", "realised_accuracy"]


def _counts(class_confidence: ArrayLike) -> np.ndarray:
    counts = np.asarray(class_confidence, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[-1] != CONFIDENCE_BINS:
        raise ValueError(
            f"class_confidence must be (classes, {CONFIDENCE_BINS}), got shape {counts.shape}"
        )
    return counts


def estimated_accuracy(class_confidence: ArrayLike, calibration: ArrayLike) -> float | None:
    """Expected accuracy of the window; None when it holds no predictions."""
    counts = _counts(class_confidence)
    cal = np.asarray(calibration, dtype=np.float64)
    if cal.shape != counts.shape[-2:]:
        raise ValueError(f"calibration shape {cal.shape} does not match counts {counts.shape}")
    total = counts.sum()
    if total <= 0:
        return None
    return float(np.sum(counts * cal) / total)


def naive_accuracy(class_confidence: ArrayLike) -> float | None:
    """Mean top-1 confidence (bin midpoints): what an uncalibrated model claims."""
    counts = _counts(class_confidence)
    total = counts.sum()
    if total <= 0:
        return None
    midpoints = (np.arange(CONFIDENCE_BINS) + 0.5) / CONFIDENCE_BINS
    return float(np.sum(counts.sum(axis=-2) * midpoints) / total)


def realised_accuracy(confusion: ArrayLike) -> tuple[float | None, int]:
    """(accuracy, labelled count) from a [true][predicted] confusion count matrix."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be square, got shape {matrix.shape}")
    total = int(matrix.sum())
    if total == 0:
        return None, 0
    return float(np.trace(matrix) / total), total
