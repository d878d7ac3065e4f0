"""Fixed-bin feature histograms (mergeable by addition) and drift statistics over them."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

EPSILON = 1e-6


def feature_histograms(features: ArrayLike, bin_edges: ArrayLike) -> NDArray[np.int64]:
    """Counts per feature and bin for a batch `features` of shape (n, ...).

    Values below the first edge land in the first bin, values above the last in the last,
    so every sample is counted exactly once per feature.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    edges = np.asarray(bin_edges, dtype=np.float64)
    num_bins = len(edges) - 1
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, num_bins - 1)
    counts = np.zeros((x.shape[1], num_bins), dtype=np.int64)
    feature_index = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    np.add.at(counts, (feature_index.ravel(), bins.ravel()), 1)
    return counts


def _distributions(reference: ArrayLike, observed: ArrayLike) -> tuple[NDArray, NDArray]:
    ref = np.asarray(reference, dtype=np.float64)
    obs = np.asarray(observed, dtype=np.float64)
    if ref.shape != obs.shape:
        raise ValueError(f"histogram shapes differ: {ref.shape} vs {obs.shape}")
    ref = ref / np.maximum(ref.sum(axis=-1, keepdims=True), 1)
    obs = obs / np.maximum(obs.sum(axis=-1, keepdims=True), 1)
    return ref, obs


def psi(reference: ArrayLike, observed: ArrayLike) -> NDArray[np.float64]:
    """Population stability index per feature (last axis = bins)."""
    ref, obs = _distributions(reference, observed)
    ref, obs = ref + EPSILON, obs + EPSILON
    return np.sum((obs - ref) * np.log(obs / ref), axis=-1)


def ks_statistic(reference: ArrayLike, observed: ArrayLike) -> NDArray[np.float64]:
    """Kolmogorov-Smirnov distance per feature, on the binned CDFs."""
    ref, obs = _distributions(reference, observed)
    return np.max(np.abs(np.cumsum(ref, axis=-1) - np.cumsum(obs, axis=-1)), axis=-1)


def js_divergence(reference: ArrayLike, observed: ArrayLike) -> NDArray[np.float64]:
    """Jensen-Shannon divergence per feature, in bits (0 = same, 1 = disjoint)."""
    ref, obs = _distributions(reference, observed)
    mid = (ref + obs) / 2

    def kl(p: NDArray, q: NDArray) -> NDArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log2(p / np.where(q > 0, q, 1)), 0.0)
        return terms.sum(axis=-1)

    return (kl(ref, mid) + kl(obs, mid)) / 2
