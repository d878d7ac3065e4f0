"""The binned statistics agree with scipy on the same samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

from server.monitoring.statistics import (
    bin_centres,
    hellinger,
    js_distance,
    ks_binned,
    out_of_range_share,
    pad_v1,
    psi,
    score_features,
    wasserstein_normalised,
)

pytestmark = pytest.mark.monitor

EDGES = np.linspace(0.0, 16.0, 11)


def _binned_samples(rng: np.random.Generator, loc: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples placed at bin positions, and their v2 histogram (under/overflow included)."""
    positions = bin_centres(EDGES)
    raw = rng.normal(loc, 4.0, n)
    index = np.searchsorted(EDGES, raw, side="right")  # 0 = underflow, 11 = overflow
    index = np.where(raw == EDGES[-1], 10, index)
    counts = np.bincount(index, minlength=12)
    return positions[index], counts


@pytest.mark.parametrize("shift", [0.0, 1.0, 3.0])
def test_wasserstein_and_ks_match_scipy_on_the_same_samples(shift: float) -> None:
    rng = np.random.default_rng(7)
    ref_samples, ref_counts = _binned_samples(rng, 8.0, 3000)
    obs_samples, obs_counts = _binned_samples(rng, 8.0 + shift, 2000)

    w1 = wasserstein_normalised(ref_counts, obs_counts, EDGES)
    ks = ks_binned(ref_counts, obs_counts)

    assert w1 == pytest.approx(wasserstein_distance(ref_samples, obs_samples) / ref_samples.std())
    assert ks == pytest.approx(ks_2samp(ref_samples, obs_samples).statistic)


def test_js_hellinger_psi_match_their_definitions() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 40, (5, 12))
    obs = rng.integers(1, 40, (5, 12))
    p = ref / ref.sum(axis=1, keepdims=True)
    q = obs / obs.sum(axis=1, keepdims=True)

    assert js_distance(ref, obs) == pytest.approx(
        [jensenshannon(a, b, base=2) for a, b in zip(p, q, strict=True)]
    )
    expected_h = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(axis=1))
    assert hellinger(ref, obs) == pytest.approx(expected_h)
    pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    assert psi(ref, obs) == pytest.approx(((qf - pf) * np.log(qf / pf)).sum(axis=1))


def test_identical_histograms_score_zero_and_out_of_range_counts_edge_bins() -> None:
    counts = np.array([[2, 10, 20, 30, 8]])
    scores = score_features(counts, counts, [0.0, 1.0, 2.0, 3.0])

    for stat in ("psi", "js", "hellinger", "wasserstein", "ks"):
        assert scores[stat] == pytest.approx([0.0], abs=1e-9), stat
    assert out_of_range_share(counts) == pytest.approx([10 / 70])


def test_a_batch_of_windows_is_scored_in_one_call() -> None:
    ref = np.array([[0, 5, 5, 0], [0, 1, 9, 0]])
    windows = np.stack([ref, ref[::-1], ref * 3])

    assert psi(ref, windows).shape == (3, 2)
    assert psi(ref, windows)[2] == pytest.approx([0.0, 0.0])


def test_v1_histograms_are_padded_and_mismatched_bins_are_refused() -> None:
    assert pad_v1([[1, 2, 3]]).tolist() == [[0, 1, 2, 3, 0]]
    with pytest.raises(ValueError, match="bins"):
        wasserstein_normalised([[1, 2, 3]], [[1, 2, 3]], EDGES)
    with pytest.raises(ValueError, match="bin counts differ"):
        psi([[1, 2, 3]], [[1, 2]])
    with pytest.raises(ValueError, match="strictly increasing"):
        bin_centres([1.0, 1.0])
