"""Drift statistics computed on binned counts (the only thing devices send).

Every function takes a reference and an observed count array whose last axis is the bins in
the telemetry v2 layout (index 0 = underflow, 1..B = the bins, B+1 = overflow) and returns
one value per leading index, so a whole batch of windows x features is scored in one call.
scipy computes what it can on binned data (the entropies of Jensen-Shannon); the
cumulative-distribution statistics (Wasserstein-1, KS) and PSI are written here because
scipy's versions take samples (or do not exist), and tests check them against scipy on the
same samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import entr

__all__ = [
    "FEATURE_STATISTICS",
    "PSI_FLOOR",
    "bin_centres",
    "hellinger",
    "js_distance",
    "ks_binned",
    "out_of_range_share",
    "pad_v1",
    "prior_shift",
    "psi",
    "score_features",
    "wasserstein_normalised",
]

PSI_FLOOR = 1e-4  # probability floor for empty bins in PSI (both sides)
FEATURE_STATISTICS = ("psi", "js", "hellinger", "wasserstein", "ks", "out_of_range")

Float = NDArray[np.float64]


def _proportions(counts: ArrayLike) -> Float:
    x = np.asarray(counts, dtype=np.float64)
    total = x.sum(axis=-1, keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def _pair(reference: ArrayLike, observed: ArrayLike) -> tuple[Float, Float]:
    ref, obs = _proportions(reference), _proportions(observed)
    if ref.shape[-1] != obs.shape[-1]:
        raise ValueError(f"bin counts differ: reference {ref.shape} vs observed {obs.shape}")
    try:
        return np.broadcast_arrays(ref, obs)  # type: ignore[return-value]
    except ValueError as err:
        raise ValueError(f"histogram shapes differ: {ref.shape} vs {obs.shape}") from err


def pad_v1(histograms: ArrayLike) -> NDArray[np.int64]:
    """Schema-1 histograms (B bins, out-of-range clipped in) in the v2 layout (B+2)."""
    x = np.asarray(histograms, dtype=np.int64)
    pad = [(0, 0)] * (x.ndim - 1) + [(1, 1)]
    return np.pad(x, pad)


def bin_centres(bin_edges: ArrayLike) -> Float:
    """Positions of the B+2 bins: the B centres, and half a bin beyond each end."""
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bin_edges must be a strictly increasing 1-D array of >= 2 edges")
    centres = (edges[:-1] + edges[1:]) / 2
    return np.concatenate(
        [[edges[0] - (edges[1] - edges[0]) / 2], centres, [edges[-1] + (edges[-1] - edges[-2]) / 2]]
    )


def _psi(ref: Float, obs: Float) -> Float:
    ref, obs = np.maximum(ref, PSI_FLOOR), np.maximum(obs, PSI_FLOOR)
    return np.asarray(np.sum((obs - ref) * np.log(obs / ref), axis=-1))


def _js(ref: Float, obs: Float) -> Float:
    mid = (ref + obs) / 2
    divergence = np.sum(entr(mid) - entr(obs) / 2, axis=-1) - np.sum(entr(ref), axis=-1) / 2
    empty = (ref.sum(axis=-1) == 0) | (obs.sum(axis=-1) == 0)
    return np.where(empty, 0.0, np.sqrt(np.clip(divergence / np.log(2), 0.0, 1.0)))


def _hellinger(ref: Float, obs: Float) -> Float:
    affinity = np.sum(np.sqrt(ref * obs), axis=-1)
    return np.sqrt(np.clip(1.0 - affinity, 0.0, 1.0))


def _cdf_gap(ref: Float, obs: Float) -> Float:
    return np.abs(np.cumsum(ref, axis=-1) - np.cumsum(obs, axis=-1))[..., :-1]


def _positions(bin_edges: ArrayLike, bins: int) -> Float:
    positions = bin_centres(bin_edges)
    if bins != len(positions):
        raise ValueError(f"histograms need {len(positions)} bins (B+2) for {len(positions) - 2} bins")
    return positions


def _w1_normalised(gap: Float, ref: Float, positions: Float) -> Float:
    w1 = np.sum(gap * np.diff(positions), axis=-1)
    mean = np.sum(ref * positions, axis=-1, keepdims=True)
    std = np.sqrt(np.sum(ref * (positions - mean) ** 2, axis=-1))
    std = np.where(std > 0, std, float(np.min(np.diff(positions))))
    return np.asarray(w1 / std)


def psi(reference: ArrayLike, observed: ArrayLike) -> Float:
    """Population stability index: sum (o - r) ln(o / r), empty bins floored at PSI_FLOOR."""
    return _psi(*_pair(reference, observed))


def js_distance(reference: ArrayLike, observed: ArrayLike) -> Float:
    """Jensen-Shannon distance in bits (0 same, 1 disjoint): sqrt(H(m) - (H(r) + H(o)) / 2)
    with scipy's elementwise entropy (scipy.spatial.distance.jensenshannon's value, which
    tests check, at a third of its cost on a batch). An empty histogram scores 0."""
    return _js(*_pair(reference, observed))


def hellinger(reference: ArrayLike, observed: ArrayLike) -> Float:
    """Hellinger distance sqrt(1 - sum sqrt(r o)), in [0, 1]."""
    return _hellinger(*_pair(reference, observed))


def ks_binned(reference: ArrayLike, observed: ArrayLike) -> Float:
    """Kolmogorov-Smirnov distance between the binned CDFs (= ks_2samp on bin positions)."""
    return np.max(_cdf_gap(*_pair(reference, observed)), axis=-1)


def wasserstein_normalised(
    reference: ArrayLike, observed: ArrayLike, bin_edges: ArrayLike
) -> Float:
    """Wasserstein-1 between the binned distributions (mass at `bin_centres`), divided by
    the reference's standard deviation on the same positions (in bin widths where the
    reference is constant)."""
    positions = _positions(bin_edges, np.shape(reference)[-1])
    ref, obs = _pair(reference, observed)
    return _w1_normalised(_cdf_gap(ref, obs), ref, positions)


def out_of_range_share(observed: ArrayLike) -> Float:
    """Share of the mass in the underflow and overflow bins."""
    obs = _proportions(observed)
    return obs[..., 0] + obs[..., -1]


def prior_shift(reference_classes: ArrayLike, observed_classes: ArrayLike) -> Float:
    """Shift of the predicted-class distribution: Jensen-Shannon distance in bits."""
    return js_distance(reference_classes, observed_classes)


def score_features(
    reference: ArrayLike, observed: ArrayLike, bin_edges: ArrayLike
) -> Mapping[str, Float]:
    """Every feature statistic of `observed` (..., F, B+2) against `reference` (F, B+2).

    Proportions and CDF gaps are computed once for all statistics (the hot path)."""
    ref, obs = _proportions(reference), _proportions(observed)
    if ref.shape[-1] != obs.shape[-1]:
        raise ValueError(f"bin counts differ: reference {ref.shape} vs observed {obs.shape}")
    positions = _positions(bin_edges, ref.shape[-1])
    gap = _cdf_gap(ref, obs)
    return {
        "psi": _psi(ref, obs),
        "js": _js(ref, obs),
        "hellinger": _hellinger(ref, obs),
        "wasserstein": _w1_normalised(gap, ref, positions),
        "ks": np.max(gap, axis=-1),
        "out_of_range": obs[..., 0] + obs[..., -1],
    }
