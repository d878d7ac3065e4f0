import numpy as np
import pytest

from edgeops.sketches import feature_histograms, js_divergence, ks_statistic, psi

pytestmark = [pytest.mark.telemetry]
EDGES = np.linspace(0, 1, 11)


def test_every_sample_is_counted_once_per_feature_even_out_of_range() -> None:
    x = np.array([[-5.0, 0.0], [0.05, 1.0], [2.0, 0.55]])
    counts = feature_histograms(x, EDGES)
    assert counts.shape == (2, 10)
    assert counts.sum(axis=1).tolist() == [3, 3]
    assert counts[0].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert counts[1].tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_histograms_merge_by_addition() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((100, 4))
    whole = feature_histograms(x, EDGES)
    parts = feature_histograms(x[:37], EDGES) + feature_histograms(x[37:], EDGES)
    assert np.array_equal(whole, parts)


@pytest.mark.monitor
def test_identical_distributions_show_no_drift() -> None:
    ref = feature_histograms(np.random.default_rng(1).random((500, 3)), EDGES)
    assert np.allclose(psi(ref, ref), 0)
    assert np.allclose(ks_statistic(ref, ref), 0)
    assert np.allclose(js_divergence(ref, ref), 0)


@pytest.mark.monitor
def test_shifted_distribution_shows_drift() -> None:
    rng = np.random.default_rng(2)
    ref = feature_histograms(rng.random((1000, 1)) * 0.5, EDGES)
    obs = feature_histograms(0.5 + rng.random((1000, 1)) * 0.5, EDGES)
    assert psi(ref, obs)[0] > 1.0
    assert ks_statistic(ref, obs)[0] == pytest.approx(1.0)
    assert js_divergence(ref, obs)[0] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.monitor
def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psi(np.ones((2, 10)), np.ones((3, 10)))
