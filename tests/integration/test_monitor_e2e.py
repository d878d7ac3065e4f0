"""The fleet monitor end to end on real parts: Mosquitto, `edgeops server run` as a process
with windows of a few seconds, the packaged int8 digits release (with its signed monitoring
reference and calibration) rolled out to six in-process agents in two device groups.

The agents stream predictions on the digits held-out split; then group `east` sees its inputs
brightened x1.4. The monitor must raise `drift_detected` for that group's cohort and never for
the other group's (the fleet-wide cohort, half drifted, may fire too), with features the
brightening moved as its evidence; `edgeops monitor status|events --json` against the live
server print the same.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.daemon import Agent
from edgeops.packaging import package_model
from edgeops.tasks import load_task
from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.cli_support import run_edgeops
from tests.edgeops.packaging_support import write_digits_checkpoint
from tests.server.rollouts.fleet_support import (
    Api,
    ServerProcess,
    free_port,
    start_agents,
    wait_for,
)

pytestmark = [pytest.mark.monitor, pytest.mark.integration, pytest.mark.timeout(300)]

GROUPS = {"east": 3, "west": 3}
WINDOW_S = 3.0
BATCH = 8  # rows per predict call
RATE_HZ = 8.0  # calls per agent per second: ~64 rows/s per agent, ~190 per group per second
BRIGHTNESS = 1.4
MONITOR_ENV = {
    "EDGEOPS_SERVER_MONITOR_WINDOW_S": str(WINDOW_S),
    "EDGEOPS_SERVER_MONITOR_INTERVAL_S": "0.5",
    "EDGEOPS_SERVER_MONITOR_GRACE_S": "1.5",
}


def brighten(x: np.ndarray) -> np.ndarray:
    return np.clip(x * BRIGHTNESS, 0.0, 1.0).astype(np.float32)


class Driver:
    """Feeds every agent batches of held-out digits; `drift(group)` brightens one group's."""

    def __init__(self, agents: dict[str, list[Agent]], x: np.ndarray) -> None:
        self._agents, self._x = agents, x.astype(np.float32)
        self.drifted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-driver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            started = time.monotonic()
            for group, agents in self._agents.items():
                for k, agent in enumerate(agents):
                    first = ((turn * len(agents) + k) * BATCH) % (len(self._x) - BATCH)
                    rows = self._x[first : first + BATCH]
                    try:
                        agent.predict(brighten(rows) if group in self.drifted else rows)
                    except Exception:  # no model yet: the agent counts the error
                        pass
            turn += 1
            self._stop.wait(max(0.0, 1.0 / RATE_HZ - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class World:
    api: Api
    driver: Driver
    release: str
    home: Path
    env: dict[str, str]
    changed_features: set[int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("monitor-e2e")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    server = driver = None
    agents: list[Agent] = []
    mp = pytest.MonkeyPatch()
    try:
        for name, value in MONITOR_ENV.items():
            mp.setenv(name, value)
        checkpoint = write_digits_checkpoint(tmp / "digits.pt")
        package_model("digits", tmp / "package", checkpoint=checkpoint, latency_runs=200)
        settings = ServerSettings(home=tmp / "server", http_port=free_port(),
                                  broker_host=broker.host, broker_port=broker.port)
        init_home(settings)
        settings = load_settings(settings.home)
        assert settings.monitor_window_s == WINDOW_S
        factory = open_database(settings.resolved_database_url)
        release = publish_package(settings, factory, tmp / "package", "int8").target_path
        close_database(factory)
        server = ServerProcess(settings.home, settings.http_host, settings.http_port,
                               tmp / "server.log")
        server.start()
        api = Api(settings.resolved_public_url, settings.admin_token_file.read_text().strip())
        trusted_root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
        by_group: dict[str, list[Agent]] = {}
        first = 0
        for group, count in GROUPS.items():
            by_group[group] = start_agents(count, tmp / "agents", settings.resolved_public_url,
                                           broker, trusted_root, first=first,
                                           telemetry_interval_s=1.0, intra_op_threads=1)
            agents += by_group[group]
            first += count
        wait_for(lambda: sum(d["online"] for d in api.devices().values()) >= len(agents), 30,
                 "every agent online at the server")
        for group, members in by_group.items():
            for agent in members:
                response = api.http.put(f"/api/devices/{agent.device_id}/labels",
                                        json={"group": group})
                assert response.status_code == 200, response.text
        deployed = api.http.post("/api/deployments", json={"target": release})
        assert deployed.status_code == 202, deployed.text
        wait_for(lambda: all(d.get("release") == release for d in api.devices().values()),
                 60, "every agent on the digits release")
        x = load_task("digits").load_data().x_test
        changed = {int(f) for f in np.flatnonzero(np.abs(brighten(x) - x).max(axis=0) > 0)}
        driver = Driver(by_group, x)
        yield World(api, driver, release, settings.home,
                    dict(os.environ), changed)
    finally:
        if driver is not None:
            driver.stop()
        for agent in agents:
            agent.stop()
        if server is not None:
            server.stop()
        broker.kill()
        mp.undo()


def _get(world: World, path: str, **params: Any) -> Any:
    response = world.api.http.get(path, params=params)
    response.raise_for_status()
    return response.json()


def test_drift_in_one_group_raises_drift_detected_for_that_cohort_only(world: World) -> None:
    east, west = f"{world.release}@east", f"{world.release}@west"

    def conclusive(cohort: str) -> list[dict[str, Any]]:
        windows = _get(world, "/api/monitor/windows", cohort=cohort, limit=50)
        return [w for w in windows if w["verdict"] != "inconclusive"]

    wait_for(lambda: len(conclusive(east)) >= 2 and len(conclusive(west)) >= 2, 30,
             "two conclusive clean windows for both groups")
    assert not _get(world, "/api/monitor/events", kind="drift_detected")
    drift_started = time.time()

    world.driver.drifted.add("east")
    events = wait_for(lambda: _get(world, "/api/monitor/events", kind="drift_detected"), 30,
                      "a drift_detected event")
    time.sleep(WINDOW_S)  # one more window: the undrifted group must stay quiet

    events = _get(world, "/api/monitor/events", kind="drift_detected")
    # The fleet cohort (the release across every device) is half drifted and may fire too.
    fleet = f"{world.release}@fleet"
    by_cohort = {e["cohort"]: e for e in events}
    assert east in by_cohort and west not in by_cohort, events
    assert set(by_cohort) <= {east, fleet}, events
    assert sum(e["cohort"] == east for e in events) == 1, events
    evidence = by_cohort[east]["evidence"]
    assert evidence["features"], evidence
    assert set(evidence["features"]) <= world.changed_features, evidence["features"]
    assert by_cohort[east]["window_end"] >= drift_started
    west_latest = conclusive(west)[0]
    assert west_latest["verdict"] == "ok", west_latest

    status = run_edgeops("monitor", "status", "--json", "--home", str(world.home),
                         env=world.env, timeout=60)
    assert status.returncode == 0, status.stderr
    cohorts = {c["cohort"]: c for c in json.loads(status.stdout)["cohorts"]}
    assert cohorts[east]["drift_alarmed"] is True
    assert cohorts[west]["drift_alarmed"] is False

    printed = run_edgeops("monitor", "events", "--json", "--home", str(world.home),
                          env=world.env, timeout=60)
    assert printed.returncode == 0, printed.stderr
    kinds = [(e["kind"], e["cohort"]) for e in json.loads(printed.stdout)["events"]]
    assert ("drift_detected", east) in kinds
    assert all(cohort != west for _kind, cohort in kinds)
