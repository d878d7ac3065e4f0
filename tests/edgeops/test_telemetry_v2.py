"""The telemetry contract of the fleet monitor: schema 1 and 2, and refused forged sketches."""

import json

import numpy as np
import pytest

from edgeops.errors import PayloadError
from edgeops.messages import PrivacyInfo, TelemetryBatch, decode, encode
from edgeops.sketches import feature_histograms, feature_histograms_v2, histogram_layout

pytestmark = [pytest.mark.monitor]

EDGES = np.linspace(0.0, 16.0, 9)  # B = 8


def v2(**fields: object) -> dict:
    base: dict = {
        "schema": 2, "device_id": "d1", "window_start": 0, "window_end": 1, "count": 3,
        "errors": 0,
        "feature_histograms": [[1, 1, 0, 0, 0, 0, 0, 0, 0, 1], [0, 3, 0, 0, 0, 0, 0, 0, 0, 0]],
        "class_confidence": [[0] * 9 + [2], [1] + [0] * 9],
        "confusion": [[1, 0], [0, 1]],
        "feedback_count": 2,
    }
    return {**base, **fields}


def raw(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def test_v2_histograms_keep_underflow_and_overflow_apart() -> None:
    x = np.array([[-1.0], [0.0], [15.9], [16.0], [16.5], [np.nan]])

    counts = feature_histograms_v2(x, EDGES)

    assert counts.shape == (1, 10)
    assert counts[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 2, 2]
    # The in-range bins agree with numpy.histogram, the v1 clipped layout merges the edges.
    inside = x[(x >= 0) & (x <= 16)]
    assert counts[0, 1:-1].tolist() == np.histogram(inside, EDGES)[0].tolist()
    assert feature_histograms(x[:5], EDGES)[0].tolist() == [2, 0, 0, 0, 0, 0, 0, 3]


def test_v2_histograms_of_many_features_sum_to_the_sample_count() -> None:
    x = np.random.default_rng(0).normal(8, 6, (200, 4, 4))

    counts = feature_histograms_v2(x, EDGES)

    assert counts.shape == (16, 10) and (counts.sum(axis=1) == 200).all()


def test_histogram_layout_tells_b_from_b_plus_2() -> None:
    assert histogram_layout(1).width(8) == 8 and histogram_layout(2).width(8) == 10
    assert histogram_layout(2).num_bins(10) == 8
    assert histogram_layout(2).in_range([[1, 2, 3, 4]]).tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="schema 7"):
        histogram_layout(7)


def test_v1_payloads_still_decode_and_mean_no_v2_sketches() -> None:
    payload = {"schema": 1, "device_id": "d1", "window_start": 0, "window_end": 1, "count": 2,
               "errors": 0, "feature_histograms": [[1, 1], [2, 0]]}

    batch = decode(TelemetryBatch, raw(payload))

    assert batch.schema_version == 1 and batch.class_confidence is None
    assert batch.confusion is None and batch.feedback_count is None and batch.privacy is None


def test_v2_round_trips_and_is_what_agents_send_by_default() -> None:
    batch = decode(TelemetryBatch, raw(v2(privacy={"mechanism": "none", "min_count": 0})))

    assert json.loads(encode(batch))["schema"] == 2
    assert decode(TelemetryBatch, encode(batch)) == batch
    assert TelemetryBatch(device_id="d", window_start=0, window_end=1, count=0,
                          errors=0).schema_version == 2


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"schema": 1}, "schema 1 telemetry cannot carry"),
        ({"feature_histograms": [[3] + [0] * 9, [3] + [0] * 8]}, r"feature_histograms\[1\]"),
        ({"feature_histograms": [[4, -1] + [0] * 8, [3] + [0] * 9]}, "negative"),
        ({"feature_histograms": [[4] + [0] * 9, [3] + [0] * 9]}, "above the window"),
        ({"feature_histograms": [[2] + [0] * 9, [3] + [0] * 9]}, "not count 3"),
        ({"class_confidence": [[3] * 10, [0] * 10]}, "class_confidence"),
        ({"class_confidence": [[3] * 9, [0] * 9]}, "expected 10"),
        ({"class_confidence": [[0] * 9 + [1], [1] + [0] * 9]}, "not count 3"),
        ({"confusion": [[1, 0, 0], [0, 1, 0]]}, "confusion"),
        ({"confusion": [[2, 1], [0, 1]], "feedback_count": 4}, "above count"),
        ({"confusion": [[1, 0], [0, 0]]}, "not feedback_count"),
        ({"feedback_count": 9, "confusion": None}, "feedback_count 9 above count"),
        ({"feedback_count": -1}, "feedback_count"),
        ({"predicted_classes": [5, -2]}, "predicted_classes"),
        ({"privacy": {"mechanism": "laplace", "epsilon": 0}}, "epsilon"),
        ({"privacy": {"mechanism": "magic"}}, "mechanism"),
        ({"privacy": {"suppressed": True, "min_count": 10}}, "suppressed window"),
        ({"privacy": {"surprise": 1}}, "surprise"),
    ],
)
def test_bad_or_forged_sketches_raise_payload_error(fields: dict, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        decode(TelemetryBatch, raw(v2(**fields)))


def test_noisy_counts_need_not_sum_to_count_but_stay_within_it() -> None:
    noisy = v2(
        feature_histograms=[[0, 2, 0, 0, 0, 0, 0, 0, 0, 0], [0, 3, 1, 0, 0, 0, 0, 0, 0, 0]],
        class_confidence=[[0] * 9 + [3], [0] * 10],
        confusion=[[1, 0], [0, 0]],
        privacy={"mechanism": "laplace", "epsilon": 1.0},
    )

    batch = decode(TelemetryBatch, raw(noisy))

    assert batch.noisy and batch.privacy == PrivacyInfo(mechanism="laplace", epsilon=1.0)
    with pytest.raises(PayloadError, match="above the window"):
        decode(TelemetryBatch, raw({**noisy, "class_confidence": [[0] * 9 + [4], [0] * 10]}))


def test_a_suppressed_window_carries_counts_but_no_sketches() -> None:
    payload = v2(feature_histograms=[], class_confidence=None, confusion=None,
                 privacy={"min_count": 50, "suppressed": True})

    batch = decode(TelemetryBatch, raw(payload))

    assert batch.privacy is not None and batch.privacy.suppressed and batch.count == 3
