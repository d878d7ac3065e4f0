"""The monitor's distances on the simplest histograms: none between identical ones, the most
between disjoint ones, and a clear error for shapes that cannot be compared."""

import numpy as np
import pytest

from edgeops.sketches import feature_histograms
from server.monitoring.statistics import js_distance, ks_binned, psi

pytestmark = [pytest.mark.monitor]
EDGES = np.linspace(0, 1, 11)


def test_identical_distributions_show_no_drift() -> None:
    ref = feature_histograms(np.random.default_rng(1).random((500, 3)), EDGES)
    assert np.allclose(psi(ref, ref), 0)
    assert np.allclose(ks_binned(ref, ref), 0)
    assert np.allclose(js_distance(ref, ref), 0)


def test_shifted_distribution_shows_drift() -> None:
    rng = np.random.default_rng(2)
    ref = feature_histograms(rng.random((1000, 1)) * 0.5, EDGES)
    obs = feature_histograms(0.5 + rng.random((1000, 1)) * 0.5, EDGES)
    assert psi(ref, obs)[0] > 1.0
    assert ks_binned(ref, obs)[0] == pytest.approx(1.0)
    assert js_distance(ref, obs)[0] == pytest.approx(1.0, abs=1e-3)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psi(np.ones((2, 10)), np.ones((3, 10)))
