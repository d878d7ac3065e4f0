"""Stopping an agent against a real Mosquitto: the final telemetry is delivered when someone
listens, kept in the outbox when nobody does, and in neither case does stop() wait out its
timeout (a PUBACK saying "no subscribers" cannot turn into a delivery by waiting)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from agent import Agent, AgentConfig
from agent.telemetry.outbox import Outbox
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import (
    NUM_FEATURES,
    Subscriber,
    build_model,
    install_model,
    make_release,
    model_weights,
)

pytestmark = [pytest.mark.integration]

DEVICE = "stop-dev"
STOP_BUDGET_S = 1.5  # the link's own timeout is 5 s; the old teardown waited all of it


def started_agent(home: Path, broker: MosquittoBroker, *, http: bool) -> Agent:
    weights = model_weights(1)
    install_model(home, make_release(1, weights), build_model(weights))
    config = AgentConfig(
        home=home,
        device_id=DEVICE,
        server_url="http://127.0.0.1:9",
        broker_host=broker.host,
        broker_port=broker.port,
        telemetry_interval_s=60.0,
        http_port=0 if http else None,
    )
    agent = Agent(config).start()
    assert agent._link is not None and agent._link.wait_connected(5)
    return agent


def timed_stop(agent: Agent) -> float:
    agent.predict(np.zeros((1, NUM_FEATURES), dtype=np.float32))  # a telemetry window to flush
    started = time.monotonic()
    agent.stop()
    return time.monotonic() - started


def outbox_messages(home: Path) -> int:
    outbox = Outbox(home / "outbox.db")
    try:
        return len(outbox)
    finally:
        outbox.close()


@pytest.mark.parametrize("http", [False, True], ids=["mqtt-only", "with-http-api"])
def test_stop_with_nobody_subscribed_is_quick_and_keeps_the_telemetry(
    tmp_path: Path, mosquitto: MosquittoBroker, http: bool
) -> None:
    home = tmp_path / "home"
    agent = started_agent(home, mosquitto, http=http)

    elapsed = timed_stop(agent)

    assert elapsed < STOP_BUDGET_S
    assert outbox_messages(home) >= 1  # sent again after the next start


def test_stop_with_a_subscriber_delivers_the_telemetry_quickly(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    home = tmp_path / "home"
    topic = f"edgeops/default/devices/{DEVICE}/telemetry"
    subscriber = Subscriber(mosquitto.host, mosquitto.port, topic)
    try:
        agent = started_agent(home, mosquitto, http=False)

        elapsed = timed_stop(agent)

        assert elapsed < STOP_BUDGET_S
        assert outbox_messages(home) == 0
        assert subscriber.wait_for(lambda payload: True, timeout_s=5)
    finally:
        subscriber.close()
