"""Feedback on a running agent: prediction ids, labels in the window and the local store."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import Agent, AgentConfig
from edgeops.errors import PayloadError
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import (
    NUM_FEATURES,
    build_model,
    install_model,
    make_release,
    model_weights,
)

pytestmark = [pytest.mark.monitor, pytest.mark.integration]


@pytest.fixture
def agent(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Agent]:
    weights = model_weights(1)
    install_model(tmp_path / "home", make_release(1, weights), build_model(weights))
    config = AgentConfig(
        home=tmp_path / "home", device_id="fb-dev", server_url="http://127.0.0.1:9",
        broker_host=mosquitto.host, broker_port=mosquitto.port, http_port=0,
        telemetry_interval_s=3600, prediction_cache_size=100, feedback_max_examples=3,
    )
    agent = Agent(config).start()
    try:
        yield agent
    finally:
        agent.stop()


def request(agent: Agent, path: str, body: bytes) -> tuple[int, Any]:
    assert agent.http_url is not None
    host, port = agent.http_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        token = agent.config.api_token_path.read_text().strip()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 16, (n, NUM_FEATURES)).astype(np.float32)


def test_feedback_lands_in_the_window_confusion_and_the_store(agent: Agent) -> None:
    x = inputs(4)
    prediction = agent.predict(x)
    ids = prediction.prediction_ids
    predicted = prediction.classes.tolist()

    agent.feedback(ids[0], 7)
    agent.feedback(ids[2], predicted[2])
    batch = agent.flush_telemetry()

    assert len(ids) == 4 and len(set(ids)) == 4
    assert batch is not None and batch.schema_version == 2 and batch.feedback_count == 2
    assert batch.confusion is not None
    confusion = np.array(batch.confusion)
    assert confusion[7, predicted[0]] == 1 and confusion[predicted[2], predicted[2]] == 1
    assert batch.class_confidence is not None and np.array(batch.class_confidence).sum() == 4
    examples = agent.feedback_store.examples()
    assert examples.labels.tolist() == [7, predicted[2]]
    np.testing.assert_array_equal(examples.inputs, x[[0, 2]])


def test_feedback_refuses_unknown_ids_bad_labels_and_second_labels(agent: Agent) -> None:
    [pid] = agent.predict(inputs(1)).prediction_ids
    with pytest.raises(PayloadError, match="unknown prediction_id"):
        agent.feedback("missing.0", 1)
    with pytest.raises(PayloadError, match="not a class"):
        agent.feedback(pid, 10)
    with pytest.raises(PayloadError, match="integer class"):
        agent.feedback(pid, "3")  # type: ignore[arg-type]
    agent.feedback(pid, 3)  # still labellable after the refusals
    with pytest.raises(PayloadError, match="already has a label"):
        agent.feedback(pid, 4)


def test_the_store_keeps_the_newest_examples(agent: Agent) -> None:
    prediction = agent.predict(inputs(5))
    for pid in prediction.prediction_ids:
        agent.feedback(pid, 1)

    assert len(agent.feedback_store) == 3


def test_http_predict_returns_ids_and_feedback_takes_labels(agent: Agent) -> None:
    status, body = request(agent, "/predict", json.dumps({"inputs": inputs(2).tolist()}).encode())
    assert status == 200 and len(body["prediction_ids"]) == 2

    ok, answer = request(agent, "/feedback", json.dumps(
        {"prediction_id": body["prediction_ids"][1], "label": 5}).encode())

    assert (ok, answer) == (200, {"prediction_id": body["prediction_ids"][1], "label": 5})
    assert agent.feedback_store.examples().labels.tolist() == [5]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{nope", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"prediction_id": "x"}', "JSON object"),
        (b'{"prediction_id": 3, "label": 1}', "prediction_id must be a string"),
        (b'{"prediction_id": "x.0", "label": "one"}', "label must be an integer"),
        (b'{"prediction_id": "x.0", "label": true}', "label must be an integer"),
        (b'{"prediction_id": "x.0", "label": 1}', "unknown prediction_id"),
    ],
)
def test_http_feedback_answers_400_naming_the_problem(
    agent: Agent, payload: bytes, needle: str
) -> None:
    status, body = request(agent, "/feedback", payload)

    assert status == 400 and needle in body["error"]


def test_http_feedback_with_a_label_outside_the_classes_is_400(agent: Agent) -> None:
    _, body = request(agent, "/predict", json.dumps({"inputs": inputs(1).tolist()}).encode())

    status, answer = request(agent, "/feedback", json.dumps(
        {"prediction_id": body["prediction_id"], "label": 42}).encode())

    assert status == 400 and "not a class" in answer["error"]
