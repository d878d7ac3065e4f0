"""The Agent without a broker: model loading, fallback, the Python predict API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent import Agent, AgentConfig, NoModelError, init_agent_home
from edgeops.errors import PayloadError
from edgeops.messages import Command
from tests.agent.support import (
    NUM_FEATURES,
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
)

pytestmark = [pytest.mark.ota, pytest.mark.integration]


def config(home: Path) -> AgentConfig:
    # Nothing listens on port 9: paho keeps retrying in the background, which is fine here.
    return AgentConfig(home=home, device_id="solo", server_url="http://127.0.0.1:9", broker_port=9)


def install(home: Path, version: int) -> None:
    weights = model_weights(version)
    install_model(home, make_release(version, weights), build_model(weights))


@pytest.fixture
def started() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        agent.stop(timeout_s=2)


def start(home: Path, started: list[Agent]) -> Agent:
    agent = Agent(config(home)).start()
    started.append(agent)
    return agent


def test_an_empty_home_is_idle_and_predict_says_so(tmp_path: Path, started: list[Agent]) -> None:
    agent = start(tmp_path, started)

    assert agent.status().state == "idle"
    with pytest.raises(NoModelError):
        agent.predict(np.zeros((1, NUM_FEATURES), dtype=np.float32))


def test_predict_accepts_lists_and_names_bad_input(tmp_path: Path, started: list[Agent]) -> None:
    install(tmp_path, 1)
    agent = start(tmp_path, started)

    prediction = agent.predict([[1.0] * NUM_FEATURES, [2.0] * NUM_FEATURES])

    assert prediction.version == 1 and prediction.probabilities.shape == (2, 10)
    assert prediction.classes.tolist() == prediction.probabilities.argmax(axis=1).tolist()
    with pytest.raises(PayloadError, match="shape"):
        agent.predict([[1.0, 2.0]])


def test_a_corrupt_active_slot_falls_back_to_the_other_one(tmp_path: Path, started: list[Agent]) -> None:
    install(tmp_path, 1)
    install(tmp_path, 2)  # active b, previous a
    (tmp_path / "slots" / "b" / "model.onnx").write_bytes(b"bit rot")

    agent = start(tmp_path, started)

    status = agent.status()
    assert (status.state, status.version) == ("running", 1)
    assert "fell back to slot a" in (status.reason or "")
    assert json.loads((tmp_path / "active.json").read_text())["slot"] == "a"


def test_both_slots_broken_leaves_the_agent_idle_with_a_reason(tmp_path: Path, started: list[Agent]) -> None:
    install(tmp_path, 1)
    (tmp_path / "slots" / "a" / "model.onnx").write_bytes(b"bit rot")

    agent = start(tmp_path, started)

    assert agent.status().state == "idle"
    assert "corrupt" in (agent.status().reason or "")


def test_update_with_unreachable_server_is_a_transport_failure(tmp_path: Path, started: list[Agent]) -> None:
    repo = TufTestRepository(tmp_path / "repo")  # signed, but nobody serves it
    init_agent_home(tmp_path / "home", config(tmp_path / "home"), repo.root_bytes)
    install(tmp_path / "home", 1)
    agent = start(tmp_path / "home", started)

    status = agent.handle_command(Command(kind="update", target="digits/2/model.fp32.onnx"))

    assert (status.state, status.version) == ("update_failed", 1)
    assert "repository metadata: download failed" in (status.reason or "")
