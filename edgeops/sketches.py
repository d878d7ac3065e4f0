"""Fixed-bin feature histograms, mergeable by addition (the drift statistics over them are
the monitor's: server.monitoring.statistics).

Two layouts: schema 1 clips values outside the bin edges into the edge bins (B counts per
feature); schema 2 keeps them apart (B+2 counts: underflow, the B bins, overflow).
`histogram_layout` tells which a telemetry schema uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CONFIDENCE_BINS",
    "HistogramLayout",
    "confidence_bins",
    "feature_histograms",
    "feature_histograms_v2",
    "histogram_layout",
]

# Equal bins of the top-1 confidence over [0, 1], in telemetry and in release calibration.
CONFIDENCE_BINS = 10


def confidence_bins(confidence: ArrayLike) -> NDArray[np.int64]:
    """Top-1 confidence bin of each prediction: min(int(c * CONFIDENCE_BINS), last bin)."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip((c * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1)


@dataclass(frozen=True)
class HistogramLayout:
    """How a telemetry schema lays out a feature's counts for B bins."""

    schema_version: int
    out_of_range_bins: bool  # True: index 0 underflow, B+1 overflow

    def width(self, num_bins: int) -> int:
        """Counts per feature for `num_bins` bins."""
        return num_bins + 2 if self.out_of_range_bins else num_bins

    def num_bins(self, width: int) -> int:
        """The B of a feature histogram of `width` counts."""
        return width - 2 if self.out_of_range_bins else width

    def in_range(self, histograms: ArrayLike) -> NDArray[np.int64]:
        """The B in-range bins of (n_features, width) counts (the whole row in schema 1)."""
        counts = np.asarray(histograms, dtype=np.int64)
        return counts[..., 1:-1] if self.out_of_range_bins else counts


def histogram_layout(schema_version: int) -> HistogramLayout:
    """The feature-histogram layout of telemetry schema `schema_version` (1 or 2)."""
    if schema_version == 1:
        return HistogramLayout(1, out_of_range_bins=False)
    if schema_version == 2:
        return HistogramLayout(2, out_of_range_bins=True)
    raise ValueError(f"no histogram layout for telemetry schema {schema_version!r}")


def feature_histograms(features: ArrayLike, bin_edges: ArrayLike) -> NDArray[np.int64]:
    """Counts per feature and bin for a batch `features` of shape (n, ...).

    Values below the first edge land in the first bin, values above the last in the last,
    so every sample is counted exactly once per feature.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    edges = np.asarray(bin_edges, dtype=np.float64)
    num_bins = len(edges) - 1
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, num_bins - 1)
    counts = np.zeros((x.shape[1], num_bins), dtype=np.int64)
    feature_index = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    np.add.at(counts, (feature_index.ravel(), bins.ravel()), 1)
    return counts


def feature_histograms_v2(features: ArrayLike, bin_edges: ArrayLike) -> NDArray[np.int64]:
    """Counts per feature for a batch `features` of shape (n, ...): (n_features, B+2).

    Index 0 counts x < edges[0], 1..B the bins (the last closed on the right, like
    numpy.histogram), B+1 counts x > edges[-1]. NaN counts as overflow.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"bin_edges need at least 2 edges, got shape {edges.shape}")
    num_bins = edges.size - 1
    # searchsorted(side="right") gives 0 below the first edge, 1..B inside, B+1 above;
    # a value equal to the last edge belongs to the last bin.
    bins = np.searchsorted(edges, x, side="right")
    bins[x == edges[-1]] = num_bins
    width = num_bins + 2
    offsets = np.arange(x.shape[1], dtype=np.int64) * width
    flat = np.bincount((bins + offsets).ravel(), minlength=x.shape[1] * width)
    return flat.reshape(x.shape[1], width).astype(np.int64, copy=False)


