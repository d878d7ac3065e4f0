"""The skeleton's whole path with real parts: server (HTTP + TUF + ingest) and an agent on a
real Mosquitto. A release whose artifact bytes no longer match the signed metadata is
refused; the reason reaches the server and the previous model keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent import Agent, AgentConfig, init_agent_home
from server.app.build import build_app
from server.app.home import init_home
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.server.helpers import live_server, make_package

pytestmark = [pytest.mark.ota, pytest.mark.pipeline, pytest.mark.integration]


def wait_for(probe: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict[str, Any]]:
    settings = ServerSettings(
        home=tmp_path / "server", broker_host=mosquitto.host, broker_port=mosquitto.port
    )
    init_home(settings)
    session_factory = open_database(settings.resolved_database_url)
    releases = [
        publish_package(settings, session_factory, make_package(tmp_path / f"pkg{i}", seed=i), "int8")
        for i in (1, 2)
    ]
    with live_server(build_app(settings)) as url:
        config = AgentConfig(
            home=tmp_path / "device",
            device_id="device-1",
            server_url=url,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            telemetry_interval_s=0.5,
        )
        init_agent_home(config.home, config, (settings.tuf_dir / "metadata" / "1.root.json").read_bytes())
        token = settings.admin_token_file.read_text().strip()
        with Agent(config) as agent, httpx.Client(base_url=url, timeout=10) as http:
            yield {
                "settings": settings,
                "releases": releases,
                "agent": agent,
                "http": http,
                "auth": {"Authorization": f"Bearer {token}"},
            }
    close_database(session_factory)


def device(http: httpx.Client, auth: dict[str, str]) -> dict[str, Any]:
    response = http.get("/api/devices/device-1", headers=auth)
    return response.json() if response.status_code == 200 else {}


def test_deploy_updates_the_agent_and_tampered_artifact_is_refused(fleet: dict[str, Any]) -> None:
    http, agent, (v1, v2) = fleet["http"], fleet["agent"], fleet["releases"]
    wait_for(lambda: device(http, fleet["auth"]).get("online"))

    deployed = http.post("/api/deployments", json={"target": v1.target_path}, headers=fleet["auth"])
    assert deployed.status_code == 202, deployed.text
    wait_for(lambda: device(http, fleet["auth"]).get("version") == v1.version)
    sample = np.zeros((1, 64), dtype=np.float32)
    before = agent.predict(sample).probabilities.copy()

    # Tamper with v2's bytes in the artifact store after it was signed.
    artifact = fleet["settings"].artifacts_dir / "sha256" / v2.artifact_sha256
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    deployed = http.post("/api/deployments", json={"target": v2.target_path}, headers=fleet["auth"])
    assert deployed.status_code == 202, deployed.text
    failed = wait_for(lambda: (d := device(http, fleet["auth"])).get("state") == "update_failed" and d)
    assert "hash" in failed["reason"].lower()
    assert failed["version"] == v1.version
    prediction = agent.predict(sample)
    assert prediction.version == v1.version
    assert np.array_equal(prediction.probabilities, before)
    wait_for(lambda: device(http, fleet["auth"]).get("telemetry_messages", 0) >= 1)


def test_deploy_requires_the_admin_token(fleet: dict[str, Any]) -> None:
    http, (v1, _v2) = fleet["http"], fleet["releases"]
    response = http.post("/api/deployments", json={"target": v1.target_path})
    assert response.status_code == 401
