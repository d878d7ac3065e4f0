"""The agent's local HTTP API over a real socket."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import Agent, AgentConfig
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import (
    NUM_FEATURES,
    build_model,
    install_model,
    make_release,
    model_weights,
    softmax_outputs,
)

pytestmark = [pytest.mark.integration]


def make_agent(home: Path, broker: MosquittoBroker, *, with_model: bool) -> Agent:
    if with_model:
        weights = model_weights(1)
        install_model(home, make_release(1, weights), build_model(weights))
    config = AgentConfig(
        home=home,
        device_id="http-dev",
        server_url="http://127.0.0.1:9",
        broker_host=broker.host,
        broker_port=broker.port,
        http_port=0,
        http_max_body_bytes=64 * 1024,
    )
    return Agent(config).start()


@pytest.fixture
def agent(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Agent]:
    agent = make_agent(tmp_path / "home", mosquitto, with_model=True)
    try:
        yield agent
    finally:
        agent.stop()


def request(agent: Agent, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    assert agent.http_url is not None
    host, port = agent.http_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        token = agent.config.api_token_path.read_text().strip()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_predict_returns_probabilities_classes_and_version(agent: Agent) -> None:
    x = np.random.default_rng(3).uniform(0, 16, (2, NUM_FEATURES)).astype(np.float32)

    status, body = request(agent, "POST", "/predict", json.dumps({"inputs": x.tolist()}).encode())

    assert status == 200
    expected = softmax_outputs(model_weights(1), x)
    np.testing.assert_allclose(np.array(body["outputs"]), expected, atol=1e-5)
    assert body["classes"] == expected.argmax(axis=1).tolist()
    assert (body["model"], body["version"]) == ("digits", 1)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "inputs"),
        (json.dumps({"inputs": [[1.0, 2.0]]}).encode(), "shape"),
        (json.dumps({"inputs": [["a"] * NUM_FEATURES]}).encode(), "numeric"),
        (json.dumps({"inputs": []}).encode(), "shape"),
    ],
)
def test_predict_rejects_bad_input_with_400(agent: Agent, body: bytes, needle: str) -> None:
    status, answer = request(agent, "POST", "/predict", body)

    assert status == 400
    assert needle in answer["error"]


def test_oversized_body_is_refused_with_413(agent: Agent) -> None:
    status, answer = request(agent, "POST", "/predict", b" " * (65 * 1024))

    assert status == 413 and "exceeds" in answer["error"]


def test_status_endpoint(agent: Agent) -> None:
    status, body = request(agent, "GET", "/status")

    assert status == 200
    assert (body["device_id"], body["version"], body["state"]) == ("http-dev", 1, "running")


def test_predict_without_model_is_503(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    agent = make_agent(tmp_path / "empty", mosquitto, with_model=False)
    try:
        x = np.zeros((1, NUM_FEATURES)).tolist()
        status, body = request(agent, "POST", "/predict", json.dumps({"inputs": x}).encode())
    finally:
        agent.stop()

    assert status == 503 and "no model" in body["error"]
    assert agent.state == "idle"
