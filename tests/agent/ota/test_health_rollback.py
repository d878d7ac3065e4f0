"""A release that passes its signatures and smoke test but regresses in the health window is
rolled back automatically on a real agent (real Mosquitto, real HTTP), and the retained
status says why."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent import Agent
from edgeops.messages import Command, DeviceStatus, decode, encode
from edgeops.schemas import HealthPolicy
from simulations.mosquitto import MosquittoBroker
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    make_setup,
)
from tests.agent.support import Subscriber

pytestmark = [pytest.mark.ota, pytest.mark.integration]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[OtaSetup]:
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        yield make_setup(tmp_path, server, repo)


def status_of(payload: bytes) -> DeviceStatus:
    return decode(DeviceStatus, payload)


def test_regressing_release_is_rolled_back_and_the_status_says_why(
    setup: OtaSetup, mosquitto: MosquittoBroker
) -> None:
    policy = HealthPolicy(window_s=0.5, min_samples=20, max_confidence_drop=0.2)
    target = setup.publish(2, scale=0.01, health=policy)  # signed, golden-consistent, useless
    before = active_model_sha(setup.home)
    config = setup.config(
        broker_host=mosquitto.host, broker_port=mosquitto.port,
        health_window_s=None, health_min_samples=None,  # the release's policy decides
    )
    statuses = Subscriber(mosquitto.host, mosquitto.port, "edgeops/default/devices/ota-dev/status")
    agent = Agent(config).start()
    stop = threading.Event()
    rng = np.random.default_rng(0)

    def traffic() -> None:
        while not stop.is_set():
            agent.predict(rng.uniform(0, 16, (4, 64)).astype(np.float32))
            stop.wait(0.005)

    thread = threading.Thread(target=traffic, daemon=True)
    try:
        assert agent.link is not None and agent.link.wait_connected(10)
        thread.start()
        stop.wait(0.3)  # the baseline: v1 serving real traffic
        statuses.publish("edgeops/default/devices/ota-dev/cmd", encode(Command(kind="update", target=target)))

        payload = statuses.wait_for(lambda p: status_of(p).state == "rolled_back", timeout_s=30)
    finally:
        stop.set()
        thread.join(5)
        agent.stop(timeout_s=2)
    rolled_back = status_of(payload)
    assert rolled_back.target == target and rolled_back.version == 1
    assert rolled_back.reason is not None and "mean confidence" in rolled_back.reason
    seen = [status_of(p).state for _, p, _ in statuses.messages]
    assert {"health_window", "rolling_back", "rolled_back"} <= set(seen)
    assert active_model_sha(setup.home) == before
    retained = Subscriber(mosquitto.host, mosquitto.port, "edgeops/default/devices/ota-dev/status")
    last = status_of(retained.wait_for(lambda p: True))
    assert last.target == target and last.release == before[0]
    statuses.close()
    retained.close()
