"""`edgeops agent run` as a process: it comes online, and SIGTERM makes it go offline cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent import AgentConfig, init_agent_home
from edgeops.messages import DeviceStatus, decode
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import (
    Subscriber,
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
)

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]


def test_run_until_sigterm_publishes_online_then_offline(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    home = tmp_path / "home"
    config = AgentConfig(
        home=home, device_id="cli-dev", server_url="http://127.0.0.1:9",
        broker_host=mosquitto.host, broker_port=mosquitto.port,
    )  # fmt: skip
    init_agent_home(home, config, TufTestRepository(tmp_path / "repo").root_bytes)
    weights = model_weights(1)
    install_model(home, make_release(1, weights), build_model(weights))
    statuses = Subscriber(mosquitto.host, mosquitto.port, "edgeops/default/devices/cli-dev/status")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeops.cli", "agent", "run", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        online = decode(DeviceStatus, statuses.wait_for(lambda p: decode(DeviceStatus, p).online, 20))
        assert (online.state, online.version) == ("running", 1)

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr
    offline = decode(DeviceStatus, statuses.wait_for(lambda p: not decode(DeviceStatus, p).online, 10))
    assert (offline.state, offline.version) == ("offline", 1)
    statuses.close()
