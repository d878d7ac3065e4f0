from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.telemetry.window import TelemetryWindow, WindowRelease
from tests.agent.support import BIN_EDGES, NUM_FEATURES, make_release, model_weights

pytestmark = [pytest.mark.telemetry]

RELEASE = WindowRelease.of(make_release(3, model_weights(3)))


def probs(classes: list[int], confidence: float = 0.91) -> np.ndarray:
    out = np.full((len(classes), 10), (1 - confidence) / 9)
    out[np.arange(len(classes)), classes] = confidence
    return out.astype(np.float32)


def test_an_empty_window_flushes_to_none() -> None:
    assert TelemetryWindow("d", RELEASE, now=0.0).flush(10.0) is None


def test_flush_summarises_counts_classes_confidence_and_histograms() -> None:
    window = TelemetryWindow("d", RELEASE, now=100.0)
    x = np.zeros((3, NUM_FEATURES), dtype=np.float32)
    x[:, 0] = [0.5, 5.0, 100.0]  # bins 0, 2 and the overflow bin (schema 2 keeps it apart)

    window.record(0.002, x, probs([1, 1, 4]))
    window.record_error()
    batch = window.flush(110.0)

    assert batch is not None
    assert (batch.window_start, batch.window_end, batch.count, batch.errors) == (100.0, 110.0, 3, 1)
    assert (batch.model, batch.version) == ("digits", 3)
    assert batch.predicted_classes == [0, 2, 0, 0, 1, 0, 0, 0, 0, 0]
    assert batch.schema_version == 2
    assert batch.feature_histograms[0] == [0, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    assert batch.feature_histograms[1] == [0, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    assert len(batch.feature_histograms) == NUM_FEATURES and len(BIN_EDGES) == 9
    assert batch.confidence is not None and batch.confidence.histogram[9] == 3
    assert batch.latency is not None and batch.latency.p50_ms == pytest.approx(2.0)
    # The next window starts empty where this one ended.
    assert window.flush(120.0) is None


def test_errors_alone_make_a_batch() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0)
    window.record_error(2)

    batch = window.flush(1.0)

    assert batch is not None and (batch.count, batch.errors, batch.latency) == (0, 2, None)


def test_folding_in_chunks_gives_the_same_totals_as_one_flush() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (50, NUM_FEATURES)).astype(np.float32)
    p = probs(list(rng.integers(0, 10, 50)))
    chunked, whole = TelemetryWindow("d", RELEASE, 0.0, max_pending=7), TelemetryWindow("d", RELEASE, 0.0)
    for i in range(0, 50, 5):
        chunked.record(0.001, x[i : i + 5], p[i : i + 5])
        whole.record(0.001, x[i : i + 5], p[i : i + 5])

    a, b = chunked.flush(1.0), whole.flush(1.0)

    assert a is not None and b is not None
    assert a.model_dump(exclude={"message_id"}) == b.model_dump(exclude={"message_id"})


def test_rebind_closes_the_window_of_the_old_release() -> None:
    window = TelemetryWindow("d", WindowRelease(), now=0.0)
    window.record_error()

    old = window.rebind(RELEASE, now=5.0)
    window.record(0.001, np.ones((1, NUM_FEATURES), dtype=np.float32), probs([2]))
    new = window.flush(6.0)

    assert old is not None and old.version is None and old.errors == 1
    assert new is not None and new.version == 3 and new.count == 1 and new.window_start == 5.0


def test_recording_from_many_threads_loses_nothing() -> None:
    window = TelemetryWindow("d", RELEASE, now=0.0, max_pending=16)
    x = np.ones((2, NUM_FEATURES), dtype=np.float32)

    def work() -> None:
        for _ in range(200):
            window.record(0.001, x, probs([0, 1]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batch = window.flush(1.0)

    assert batch is not None and batch.count == 1600 and sum(batch.predicted_classes) == 1600


@pytest.mark.parametrize("calls", [1, 2, 7, 1000])
def test_latency_percentiles_are_numpys_linear_percentiles(calls: int) -> None:
    latencies_s = np.random.default_rng(calls).lognormal(-7, 0.5, calls)
    window = TelemetryWindow("d", RELEASE, now=0.0)
    x = np.ones((1, NUM_FEATURES), dtype=np.float32)
    for latency_s in latencies_s:
        window.record(float(latency_s), x, probs([0]))

    batch = window.flush(1.0)

    assert batch is not None and batch.latency is not None
    expected = np.percentile(latencies_s * 1000.0, [50, 95, 99])
    actual = [batch.latency.p50_ms, batch.latency.p95_ms, batch.latency.p99_ms]
    assert actual == pytest.approx(expected, rel=1e-12)
