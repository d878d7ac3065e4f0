"""The agent against real parts: Mosquitto, a signed TUF repository over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent import Agent, AgentConfig, init_agent_home
from edgeops.errors import PayloadError
from edgeops.messages import Command, DeviceStatus, TelemetryBatch, decode, encode
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import (
    NUM_FEATURES,
    StaticServer,
    Subscriber,
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
    softmax_outputs,
)

pytestmark = [pytest.mark.ota, pytest.mark.integration]

DEVICE = "dev-1"


@dataclass
class OtaEnv:
    repo: TufTestRepository
    server: StaticServer
    broker: MosquittoBroker
    home: Path
    weights: dict[int, np.ndarray]

    def config(self, **overrides: object) -> AgentConfig:
        values: dict[str, object] = dict(
            home=self.home,
            device_id=DEVICE,
            server_url=self.server.url,
            broker_host=self.broker.host,
            broker_port=self.broker.port,
            telemetry_interval_s=60.0,
            mqtt_reconnect_min_s=1,
            mqtt_reconnect_max_s=1,
            health_window_s=0.2,  # the health window itself is tested in tests/ota
            health_min_samples=0,
        )
        values.update(overrides)
        return AgentConfig(**values)  # type: ignore[arg-type]

    def publish_release(self, version: int, *, golden_from: int | None = None) -> str:
        weights = self.weights.setdefault(version, model_weights(version))
        golden = None if golden_from is None else model_weights(golden_from)
        return self.repo.add_release(
            make_release(version, weights, golden_weights=golden), build_model(weights)
        )

    def subscriber(self, kind: str) -> Subscriber:
        topic = f"edgeops/default/devices/{DEVICE}/{kind}"
        return Subscriber(self.broker.host, self.broker.port, topic)


@pytest.fixture
def env(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[OtaEnv]:
    repo = TufTestRepository(tmp_path / "repo")
    with StaticServer(repo.root_dir) as server:
        env = OtaEnv(repo, server, mosquitto, tmp_path / "home", {})
        init_agent_home(env.home, env.config(), repo.root_bytes)
        weights = env.weights.setdefault(1, model_weights(1))
        install_model(env.home, make_release(1, weights), build_model(weights))
        yield env


@pytest.fixture
def agent(env: OtaEnv) -> Iterator[Agent]:
    agent = Agent(env.config()).start()
    assert agent.link is not None and agent.link.wait_connected(10)
    try:
        yield agent
    finally:
        agent.stop()


def status_of(payload: bytes) -> DeviceStatus:
    return decode(DeviceStatus, payload)


def predict_version(agent: Agent) -> int:
    x = np.full((1, NUM_FEATURES), 3.0, dtype=np.float32)
    return agent.predict(x).version


def test_update_command_over_mqtt_switches_and_retains_new_version(env: OtaEnv, agent: Agent) -> None:
    target = env.publish_release(2)
    statuses = env.subscriber("status")
    statuses.wait_for(lambda p: status_of(p).version == 1 and status_of(p).state == "running")

    statuses.publish(f"edgeops/default/devices/{DEVICE}/cmd", encode(Command(kind="update", target=target)))

    assert agent.wait_for_version(2, timeout_s=15)
    statuses.wait_for(lambda p: status_of(p).version == 2 and status_of(p).state == "committed")
    states = [status_of(p).state for _, p, _ in statuses.messages]
    states = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]  # progress repeats
    chain = [
        "downloading", "verifying", "staged", "smoke_testing", "switching", "health_window", "committed"
    ]
    start = states.index("downloading")
    assert [s for s in states[start:] if s in chain][: len(chain)] == chain
    statuses.close()
    # A fresh subscriber sees the retained status with the new version.
    fresh = env.subscriber("status")
    retained = status_of(fresh.wait_for(lambda p: True))
    assert (retained.version, retained.release, retained.state) == (2, target, "committed")
    fresh.close()
    x = np.random.default_rng(0).uniform(0, 16, (3, NUM_FEATURES)).astype(np.float32)
    prediction = agent.predict(x)
    assert prediction.version == 2
    np.testing.assert_allclose(prediction.probabilities, softmax_outputs(env.weights[2], x), atol=1e-5)


def test_tampered_artifact_is_refused_and_previous_model_keeps_serving(env: OtaEnv, agent: Agent) -> None:
    target = env.publish_release(2)
    env.repo.tamper(target)

    status = agent.handle_command(Command(kind="update", target=target))

    assert status.state == "update_failed"
    assert status.reason is not None and ("hash" in status.reason or "length" in status.reason)
    assert status.version == 1 and predict_version(agent) == 1
    statuses = env.subscriber("status")
    retained = status_of(statuses.wait_for(lambda p: True))
    assert retained.state == "update_failed" and retained.version == 1
    statuses.close()


def test_golden_mismatch_fails_smoke_test_and_does_not_switch(env: OtaEnv, agent: Agent) -> None:
    target = env.publish_release(2, golden_from=99)

    status = agent.handle_command(Command(kind="update", target=target))

    assert status.state == "update_failed"
    assert "golden" in (status.reason or "")
    assert predict_version(agent) == 1
    assert json.loads((env.home / "active.json").read_text())["target"].startswith("digits/1/")


def test_unknown_target_is_reported(env: OtaEnv, agent: Agent) -> None:
    status = agent.handle_command(Command(kind="update", target="digits/7/model.fp32.onnx"))

    assert status.state == "update_failed" and "unknown target" in (status.reason or "")


def test_rollback_returns_to_previous_slot(env: OtaEnv, agent: Agent) -> None:
    agent.handle_command(Command(kind="update", target=env.publish_release(2)))
    assert predict_version(agent) == 2
    assert agent.wait_for_state("committed", timeout_s=10)

    status = agent.handle_command(Command(kind="rollback"))

    assert (status.state, status.version) == ("rolled_back", 1)
    assert predict_version(agent) == 1
    # Nothing further back: a second rollback is refused and changes nothing.
    again = agent.handle_command(Command(kind="rollback"))
    assert again.version == 1 and "no previous model" in (again.reason or "")


def test_malformed_commands_are_counted_and_do_not_crash(env: OtaEnv, agent: Agent) -> None:
    target = env.publish_release(2)
    cmd_topic = f"edgeops/default/devices/{DEVICE}/cmd"
    client = env.subscriber("status")
    for payload in (b"not json", b'{"schema": 1, "kind": "explode"}', b'{"schema": 1, "kind": "update"}', b"\xff" * 10):
        client.publish(cmd_topic, payload)

    client.publish(cmd_topic, encode(Command(kind="update", target=target)))

    assert agent.wait_for_version(2, timeout_s=15)
    assert agent.bad_commands == 4
    client.close()


def test_last_will_publishes_offline_when_the_socket_dies(env: OtaEnv, agent: Agent) -> None:
    statuses = env.subscriber("status")
    statuses.wait_for(lambda p: status_of(p).online)
    assert agent.link is not None
    sock = agent.link.socket()

    sock.shutdown(socket.SHUT_RDWR)  # the broker sees the TCP connection drop, no DISCONNECT

    offline = status_of(statuses.wait_for(lambda p: status_of(p).state == "offline", timeout_s=10))
    assert (offline.online, offline.version) == (False, 1)  # the will keeps what it ran
    # paho reconnects and the agent restates its status.
    after = next(i for i, (_, p, _) in enumerate(statuses.messages) if status_of(p).state == "offline")
    back = status_of(statuses.wait_for(lambda p: status_of(p).online, timeout_s=10, start=after + 1))
    assert (back.state, back.version) == ("running", 1)
    statuses.close()


def test_clean_stop_publishes_offline_retained(env: OtaEnv) -> None:
    agent = Agent(env.config()).start()
    assert agent.link is not None and agent.link.wait_connected(10)

    agent.stop()

    statuses = env.subscriber("status")
    retained = status_of(statuses.wait_for(lambda p: True))
    assert (retained.online, retained.state, retained.version) == (False, "offline", 1)
    statuses.close()


def test_telemetry_batch_arrives_with_counts_and_histograms(env: OtaEnv) -> None:
    telemetry = env.subscriber("telemetry")
    agent = Agent(env.config(telemetry_interval_s=0.3)).start()
    try:
        x = np.random.default_rng(1).uniform(0, 16, (5, NUM_FEATURES)).astype(np.float32)
        agent.predict(x)
        agent.predict(x[:2])
        with pytest.raises(PayloadError, match="must have shape"):
            agent.predict(np.zeros((1, 3), dtype=np.float32))

        payload = telemetry.wait_for(lambda p: decode(TelemetryBatch, p).count > 0, timeout_s=10)
    finally:
        agent.stop()
        telemetry.close()

    batch = decode(TelemetryBatch, payload)
    assert (batch.device_id, batch.model, batch.version) == (DEVICE, "digits", 1)
    assert batch.count == 7 and batch.errors == 1
    assert sum(batch.predicted_classes) == 7 and len(batch.predicted_classes) == 10
    assert len(batch.feature_histograms) == NUM_FEATURES
    assert all(sum(row) == 7 for row in batch.feature_histograms)
    assert batch.latency is not None and batch.latency.p50_ms > 0
    assert batch.confidence is not None and sum(batch.confidence.histogram) == 7
