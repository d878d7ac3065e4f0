"""The on-device store of labelled examples: bounded, crash-safe, labelled once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.telemetry.feedback_store import FeedbackStore
from agent.telemetry.recent_predictions import RecentPredictions, sample_ids
from edgeops.errors import ConfigError, PayloadError
from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.monitor]


def row(i: int) -> np.ndarray:
    return np.full(4, i, dtype=np.float32)


def test_examples_come_back_oldest_first_with_labels_and_predictions(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.db")
    for i in range(3):
        store.add(f"p{i}", row(i), label=i, predicted=(i + 1) % 3, now=float(i), model="digits")

    examples = store.examples()

    assert len(store) == 3 and len(examples) == 3
    assert examples.inputs.shape == (3, 4) and examples.inputs[:, 0].tolist() == [0, 1, 2]
    assert examples.labels.tolist() == [0, 1, 2] and examples.predicted.tolist() == [1, 2, 0]
    assert len(store.examples(model="other")) == 0
    assert store.examples(limit=2).labels.tolist() == [1, 2]


def test_the_cap_drops_the_oldest(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.db", max_examples=5)
    for i in range(12):
        store.add(f"p{i}", row(i), label=i % 10, predicted=0, now=float(i))

    assert len(store) == 5
    assert store.examples().inputs[:, 0].tolist() == [7, 8, 9, 10, 11]


def test_a_prediction_is_labelled_once(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.db")
    store.add("p", row(1), label=1, predicted=1, now=0.0)

    with pytest.raises(PayloadError, match="already has a label"):
        store.add("p", row(1), label=2, predicted=1, now=1.0)
    assert len(store) == 1


def test_bad_cap_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="feedback_max_examples"):
        FeedbackStore(tmp_path / "f.db", max_examples=0)


def test_a_committed_label_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from agent.telemetry.feedback_store import FeedbackStore
        store = FeedbackStore({str(path)!r})
        store.add("p1", np.ones(4, dtype=np.float32), label=3, predicted=2, now=0.0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, timeout=60)

    assert done.returncode == -9
    examples = FeedbackStore(path).examples()
    assert examples.labels.tolist() == [3] and examples.inputs.tolist() == [[1, 1, 1, 1]]


def test_recent_predictions_join_ids_to_samples_and_forget_the_oldest() -> None:
    recent = RecentPredictions(max_samples=4)
    probs = np.eye(3, dtype=np.float32)
    first = recent.add(np.arange(9, dtype=np.float32).reshape(3, 3), probs, "digits", 1)
    single = recent.add(np.ones((1, 3), dtype=np.float32), probs[:1], "digits", 1)

    sample = recent.take(sample_ids(first, 3)[2])
    assert (sample.predicted, sample.inputs.tolist(), sample.num_classes) == (2, [6, 7, 8], 3)
    assert recent.take(single).prediction_id == f"{single}.0"  # a one-sample call: bare id
    with pytest.raises(PayloadError, match="already has a label"):
        recent.take(f"{first}.2")
    with pytest.raises(PayloadError, match="ids .*0 to .*2"):
        recent.take(f"{first}.3")
    with pytest.raises(PayloadError, match="unknown prediction_id"):
        recent.take("nope")

    recent.add(np.zeros((2, 3), dtype=np.float32), probs[:2], "digits", 1)  # 6 > 4: first goes
    with pytest.raises(PayloadError, match="too old"):
        recent.take(f"{first}.0")


def test_the_federated_client_trains_on_the_stored_feedback_too(tmp_path: Path) -> None:
    from agent.federated.local_data import LocalData, add_feedback

    base = LocalData(np.zeros((2, 2, 2), np.float32), np.array([0, 1]),
                     np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64))
    assert add_feedback(base, tmp_path / "absent.db") is base
    store = FeedbackStore(tmp_path / "feedback.db")
    store.add("p", row(5), label=9, predicted=3, now=0.0)
    store.close()

    data = add_feedback(base, tmp_path / "feedback.db")

    assert data.x_train.shape == (3, 2, 2) and data.y_train.tolist() == [0, 1, 9]
    assert data.x_train[2].ravel().tolist() == [5, 5, 5, 5] and data.x_test is base.x_test
    wrong = LocalData(np.zeros((1, 3), np.float32), np.array([0]), base.x_test, base.y_test)
    with pytest.raises(ConfigError, match="feedback examples"):
        add_feedback(wrong, tmp_path / "feedback.db")
