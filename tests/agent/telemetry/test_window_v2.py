"""Telemetry window schema 2: class x confidence, feedback confusion, on-device privacy."""

import numpy as np
import pytest

from agent.telemetry.privacy import WindowPrivacy
from agent.telemetry.window import TelemetryWindow, WindowRelease
from edgeops.errors import ConfigError
from edgeops.messages import TelemetryBatch, decode, encode
from tests.agent.support import NUM_FEATURES, make_release, model_weights

pytestmark = [pytest.mark.monitor]

RELEASE = WindowRelease.of(make_release(3, model_weights(3)))


def probs(classes: list[int], confidence: float) -> np.ndarray:
    out = np.full((len(classes), 10), (1 - confidence) / 9)
    out[np.arange(len(classes)), classes] = confidence
    return out.astype(np.float32)


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(-2, 18, (n, NUM_FEATURES)).astype(np.float32)


def test_class_confidence_counts_predictions_by_class_and_confidence_bin() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0)
    window.record(0.001, inputs(3), probs([1, 1, 4], 0.95))
    window.record(0.001, inputs(2), probs([4, 7], 0.35))

    batch = window.flush(1.0)

    assert batch is not None and batch.class_confidence is not None
    grid = np.array(batch.class_confidence)
    assert grid.shape == (10, 10) and grid.sum() == 5
    assert grid[1, 9] == 2 and grid[4, 9] == 1 and grid[4, 3] == 1 and grid[7, 3] == 1
    assert (np.array(batch.feature_histograms).sum(axis=1) == 5).all()
    assert batch.feedback_count == 0 and batch.confusion is None
    assert decode(TelemetryBatch, encode(batch)) == batch  # passes its own validation


def test_feedback_fills_the_confusion_count_of_the_window() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0)
    window.record(0.001, inputs(3), probs([1, 1, 4], 0.9))
    window.record_feedback(true_class=1, predicted_class=1)
    window.record_feedback(true_class=3, predicted_class=4)

    batch = window.flush(1.0)

    assert batch is not None and batch.confusion is not None
    confusion = np.array(batch.confusion)
    assert batch.feedback_count == 2 and confusion.sum() == 2
    assert confusion[1, 1] == 1 and confusion[3, 4] == 1
    assert window.flush(2.0) is None  # sent once


def test_labels_beyond_the_window_count_wait_for_the_next_window() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0)
    window.record(0.001, inputs(1), probs([2], 0.9))
    window.record_feedback(2, 2)
    window.record_feedback(5, 2)  # two labels, one prediction: not valid in this window

    first = window.flush(1.0)
    window.record(0.001, inputs(2), probs([2, 2], 0.9))
    second = window.flush(2.0)

    assert first is not None and first.confusion is None and first.feedback_count == 0
    assert second is not None and second.feedback_count == 2
    assert second.confusion is not None and np.array(second.confusion)[5, 2] == 1


def test_a_window_below_the_minimum_count_sends_no_sketches() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0, privacy=WindowPrivacy(min_count=10))
    window.record(0.001, inputs(3), probs([1, 1, 4], 0.9))

    batch = window.flush(1.0)

    assert batch is not None and batch.privacy is not None and batch.privacy.suppressed
    assert batch.count == 3 and batch.feature_histograms == [] and batch.class_confidence is None
    assert decode(TelemetryBatch, encode(batch)) == batch


def test_laplace_noise_is_recorded_and_keeps_counts_within_the_window() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0, seed=3,
                             privacy=WindowPrivacy(min_count=5, epsilon=2.0))
    window.record(0.001, inputs(400), probs([1] * 400, 0.9))
    window.record_feedback(1, 1)

    batch = window.flush(1.0)

    assert batch is not None and batch.privacy is not None
    assert (batch.privacy.mechanism, batch.privacy.epsilon, batch.privacy.suppressed) == (
        "laplace", 2.0, False)
    hist = np.array(batch.feature_histograms)
    assert hist.min() >= 0 and hist.max() <= 400
    clean = TelemetryWindow("d", RELEASE, now=0.0)
    clean.record(0.001, inputs(400), probs([1] * 400, 0.9))
    exact = clean.flush(1.0)
    assert exact is not None and hist.tolist() != exact.feature_histograms  # noise was added
    assert decode(TelemetryBatch, encode(batch)) == batch


def test_bad_privacy_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="telemetry_epsilon"):
        WindowPrivacy(epsilon=0.0)
    with pytest.raises(ConfigError, match="telemetry_min_count"):
        WindowPrivacy(min_count=-1)
