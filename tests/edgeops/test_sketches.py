import numpy as np
import pytest

from edgeops.sketches import feature_histograms

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
