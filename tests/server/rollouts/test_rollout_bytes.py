"""Acceptance (issue 17): a rollout's summary shows the bytes sent and what full downloads
would have cost, through the real path: two real agents on v1 over a real Mosquitto and
HTTP server, a rollout of v2 (a warm-started retrain, so the server signed a delta from
v1), the agents' statuses with their transfer ingested into the database, and the API,
the CLI and the console reading the sums back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from agent import Agent, AgentConfig, init_agent_home
from edgeops.cli import root
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import Device
from server.pipeline.publishing import PublishedRelease, publish_package
from server.registry.artifact_store import ArtifactStore
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import install_model
from tests.edgeops.delta_models import delta_models, write_package
from tests.server.console.support import console_login
from tests.server.helpers import live_server
from tests.server.rollouts.fleet_support import wait_for

pytestmark = [pytest.mark.rollouts, pytest.mark.ota, pytest.mark.integration,
              pytest.mark.timeout(180)]

DEVICES = ("bytes-1", "bytes-2")


@dataclass
class BytesFleet:
    settings: ServerSettings
    url: str
    http: httpx.Client
    v1: PublishedRelease
    v2: PublishedRelease

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        response = self.http.get(f"/api/rollouts/{rollout_id}")
        return response.json() if response.status_code == 200 else {}

    def edgeops(self, *args: str) -> str:
        result = CliRunner().invoke(root, [*args, "--home", str(self.settings.home),
                                           "--server", self.url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output


def _publish(settings: ServerSettings, tmp: Path) -> tuple[PublishedRelease, PublishedRelease]:
    """v1, then v2 while the inventory says both devices run v1 (so v2 gets a delta)."""
    models = delta_models()
    factory = open_database(settings.resolved_database_url)
    try:
        v1 = publish_package(settings, factory, write_package(tmp / "v1", models.base))
        with factory.begin() as session:
            for device_id in DEVICES:
                session.add(Device(device_id=device_id, online=False, model="digits", version=1,
                                   release=v1.target_path, first_seen_at=datetime.now(UTC)))
        v2 = publish_package(settings, factory, write_package(tmp / "v2", models.retrain))
    finally:
        close_database(factory)
    return v1, v2


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[BytesFleet]:
    settings = ServerSettings(home=tmp_path / "server", broker_host=mosquitto.host,
                              broker_port=mosquitto.port)
    init_home(settings)
    v1, v2 = _publish(settings, tmp_path)
    v1_bytes = ArtifactStore(settings.artifacts_dir).path_for(v1.artifact_sha256).read_bytes()
    trusted_root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
    app = build_app(settings)
    agents: list[Agent] = []
    with live_server(app) as url, httpx.Client(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {read_admin_token(settings)}"},
    ) as http:
        try:
            for device_id in DEVICES:
                config = AgentConfig(
                    home=tmp_path / device_id, device_id=device_id, server_url=url,
                    broker_host=mosquitto.host, broker_port=mosquitto.port,
                    telemetry_interval_s=5.0, health_window_s=0.2, health_min_samples=0,
                )
                init_agent_home(config.home, config, trusted_root)
                install_model(config.home, v1.release_info, v1_bytes)
                agents.append(Agent(config).start())
            wait_for(lambda: all(d["online"] and d["release"] == v1.target_path
                                 for d in http.get("/api/devices").json()
                                 if d["device_id"] in DEVICES)
                     and len(http.get("/api/devices").json()) == len(DEVICES), 30,
                     "both agents online on v1")
            yield BytesFleet(settings, url, http, v1, v2)
        finally:
            for agent in agents:
                agent.stop(timeout_s=2)


def test_a_rollout_summary_shows_bytes_sent_and_what_full_downloads_would_cost(
    fleet: BytesFleet,
) -> None:
    started = fleet.http.post("/api/rollouts", json={"target": fleet.v2.target_path,
                                                     "waves_pct": [100], "soak_s": 0})
    assert started.status_code == 201, started.text
    assert (started.json()["bytes_sent"], started.json()["bytes_full"]) == (0, 0)
    rid = started.json()["id"]

    done = wait_for(lambda: (r := fleet.rollout(rid)).get("status") in ("completed", "aborted")
                    and r.get("transfers") and sum(r["transfers"].values()) == len(DEVICES)
                    and r, 60, "the rollout to finish with both transfers reported")

    full = len(DEVICES) * fleet.v2.size_bytes
    assert done["status"] == "completed", done
    assert done["bytes_full"] == full
    assert done["transfers"] == {"delta": len(DEVICES)}
    assert 0 < done["bytes_sent"] < 0.9 * full  # the delta from v1, not the artifact

    listed = next(r for r in fleet.http.get("/api/rollouts").json() if r["id"] == rid)
    as_json = json.loads(fleet.edgeops("rollout", "status", str(rid), "--json"))
    human = fleet.edgeops("rollout", "status", str(rid))
    with httpx.Client(base_url=fleet.url, timeout=30) as browser:
        console_login(browser, read_admin_token(fleet.settings))
        page = browser.get(f"/console/rollouts/{rid}")
        progress = browser.get(f"/console/rollouts/{rid}/progress")

    sums = (done["bytes_sent"], done["bytes_full"], done["transfers"])
    assert (listed["bytes_sent"], listed["bytes_full"], listed["transfers"]) == sums
    assert (as_json["bytes_sent"], as_json["bytes_full"], as_json["transfers"]) == sums
    share = round(100 * done["bytes_sent"] / full)
    assert f"full ({share} %) (delta {len(DEVICES)})" in human, human
    assert page.status_code == 200 and progress.status_code == 200, progress.text
    shown = re.search(r'<p id="rollout-bytes">Bytes sent ([^<]*)</p>', page.text)
    assert shown is not None, page.text
    assert shown[1].endswith(f"full ({share} %)") and shown[1] == progress.json()["bytes_text"]
