"""Download now, switch later, end to end: a real Mosquitto, `edgeops server run` as a
subprocess, and real agents in this process whose clocks the test moves (real time plus an
offset), so a switch window opens when the test says rather than at 02:00.

A rollout with a window for every group: the devices download and stage at once, report
`staged`, and wait past the rollout's device timeout without timing out; once their clocks
enter the window they switch by themselves and the rollout completes. A rollout that
switches on command waits until `edgeops rollout switch`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from agent import Agent, AgentConfig, init_agent_home
from edgeops.cli import root
from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.agent.ota.shifted_clock import ShiftedClock
from tests.server.rollouts.fleet_support import (
    Api,
    PredictionDriver,
    ServerProcess,
    free_port,
    inputs_for,
    make_gated_package,
    wait_for,
)

pytestmark = [pytest.mark.rollouts, pytest.mark.ota, pytest.mark.integration,
              pytest.mark.timeout(120)]

WINDOW = "02:00-04:00"
CLOSED, OPEN = 1 * 3600.0, 2 * 3600.0 + 60  # 01:00 and 02:01 UTC
DEVICE_TIMEOUT_S = 3.0
DEVICES = ("sw-000", "sw-001")


@dataclass
class SwitchFleet:
    api: Api
    settings: ServerSettings
    targets: dict[str, str]
    clocks: list[ShiftedClock]

    def set_clocks(self, time_of_day_s: float) -> None:
        for clock in self.clocks:
            clock.set(time_of_day_s)

    def states(self) -> dict[str, tuple[str | None, str | None]]:
        devices = self.api.devices()
        return {d: (devices.get(d, {}).get("release"), devices.get(d, {}).get("state"))
                for d in DEVICES}

    def all_on(self, target: str) -> bool:
        return all(release == target and state in ("committed", "running")
                   for release, state in self.states().values())

    def phases(self, rollout_id: int) -> set[str]:
        return {row["phase"] for row in self.api.rollout_devices(rollout_id)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchFleet]:
    tmp = tmp_path_factory.mktemp("switch")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    server = driver = None
    agents: list[Agent] = []
    try:
        settings = ServerSettings(home=tmp / "server", http_port=free_port(),
                                  broker_host=broker.host, broker_port=broker.port)
        init_home(settings)
        settings = load_settings(settings.home)
        factory = open_database(settings.resolved_database_url)
        targets = {
            name: publish_package(settings, factory, make_gated_package(tmp / name, seed),
                                  "int8").target_path
            for name, seed in (("v1", 1), ("v2", 2), ("v3", 3))
        }
        close_database(factory)
        server = ServerProcess(settings.home, settings.http_host, settings.http_port,
                               tmp / "server.log")
        server.start()
        trusted_root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
        clocks = [ShiftedClock(CLOSED) for _ in DEVICES]
        for device_id, clock in zip(DEVICES, clocks):
            config = AgentConfig(
                home=tmp / device_id, device_id=device_id,
                server_url=settings.resolved_public_url, broker_host=broker.host,
                broker_port=broker.port, telemetry_interval_s=5.0, health_window_s=0.5,
                health_min_samples=3, intra_op_threads=1,
            )
            init_agent_home(config.home, config, trusted_root)
            agents.append(Agent(config, clock=clock).start())
        driver = PredictionDriver(agents, lambda i: inputs_for(False, seed=i), 20.0).start()
        api = Api(settings.resolved_public_url, settings.admin_token_file.read_text().strip())
        fleet = SwitchFleet(api, settings, targets, clocks)
        wait_for(lambda: sum(d["online"] for d in api.devices().values()) == len(DEVICES), 30,
                 "both agents online at the server")
        deployed = api.http.post("/api/deployments", json={"target": targets["v1"]})
        assert deployed.status_code == 202, deployed.text
        wait_for(lambda: fleet.all_on(targets["v1"]), 30, "both agents on v1")
        yield fleet
    finally:
        if driver is not None:
            driver.stop()
        for agent in agents:
            agent.stop(timeout_s=2)
        if server is not None:
            server.stop()
        broker.kill()


def test_a_staged_update_switches_only_in_its_window(fleet: SwitchFleet) -> None:
    target = fleet.targets["v2"]
    fleet.set_clocks(CLOSED)
    started = fleet.api.start_rollout(target=target, waves_pct=[100], soak_s=0,
                                      device_timeout_s=DEVICE_TIMEOUT_S,
                                      switch_windows={"*": WINDOW})
    rid = started["id"]

    staged = wait_for(lambda: (r := fleet.api.rollout(rid)).get("staged") == len(DEVICES) and r,
                      20, "both devices staged")
    time.sleep(DEVICE_TIMEOUT_S + 1.5)  # past the device timeout, outside the window
    waiting = fleet.api.rollout(rid)
    states = fleet.states()

    assert staged["status"] == "running" and staged["waves"][0]["staged"] == len(DEVICES)
    assert waiting["status"] == "running" and waiting["failed"] == 0, waiting
    assert fleet.phases(rid) == {"staged"}
    assert states == {d: (fleet.targets["v1"], "staged") for d in DEVICES}
    reasons = {row["reason"] for row in fleet.api.rollout_devices(rid)}
    assert all(WINDOW in (reason or "") for reason in reasons), reasons

    fleet.set_clocks(OPEN)
    done = wait_for(lambda: (r := fleet.api.rollout(rid)).get("status") in ("completed",
                                                                           "aborted") and r,
                    30, "the rollout to finish once the window opened")

    assert done["status"] == "completed", done
    assert done["done"] == len(DEVICES) and done["staged"] == 0
    assert fleet.all_on(target)


def test_a_command_hold_switches_on_edgeops_rollout_switch(fleet: SwitchFleet) -> None:
    target = fleet.targets["v3"]
    fleet.set_clocks(OPEN)  # a command hold ignores windows
    started = fleet.api.start_rollout(target=target, waves_pct=[100], soak_s=0,
                                      device_timeout_s=DEVICE_TIMEOUT_S, switch="command")
    rid = started["id"]
    wait_for(lambda: fleet.api.rollout(rid).get("staged") == len(DEVICES), 20,
             "both devices staged")
    time.sleep(1.0)
    assert fleet.api.rollout(rid)["status"] == "running"
    assert {state for _, state in fleet.states().values()} == {"staged"}

    result = CliRunner().invoke(root, [
        "rollout", "switch", str(rid), "--home", str(fleet.settings.home),
        "--server", fleet.settings.resolved_public_url, "--json",
    ], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)["switched"]) == list(DEVICES)
    done = wait_for(lambda: (r := fleet.api.rollout(rid)).get("status") in ("completed",
                                                                           "aborted") and r,
                    30, "the rollout to finish after the switch")
    assert done["status"] == "completed", done
    assert fleet.all_on(target)
