"""Staged rollouts on a real fleet: 200 real agents (two agent processes of 100, each agent
with its own home, MQTT session and onnxruntime model), a real Mosquitto, and `edgeops server run` as a
subprocess that the restart test SIGKILLs.

The tests run in order on one fleet (each starts from whatever the previous one left):
healthy rollout wave by wave -> rollout surviving a server SIGKILL -> a release that
regresses on 20% of the first big wave, aborted automatically and rolled back everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.server.rollouts.fleet_support import (
    AgentPools,
    Api,
    CommandSniffer,
    ServerProcess,
    agent_supports_health_window,
    free_port,
    make_gated_package,
    wait_for,
)

pytestmark = [pytest.mark.rollouts, pytest.mark.integration, pytest.mark.timeout(600)]

DEVICES = int(os.environ.get("EDGEOPS_ROLLOUT_TEST_DEVICES", "200"))
AGENTS_PER_PROCESS = 100  # paho's select() limit: see tests/server/rollouts/agent_pool.py
BAD_EVERY = 5
COMMITTED = ("committed", "running")


def bad_region(index: int) -> bool:
    """Every fifth device (004, 009, 014, ...) sees the inputs the bad release fails on:
    none in the 1% canary wave (000, 001), 4 of the 18 devices of the 10% wave (22%)."""
    return index % BAD_EVERY == BAD_EVERY - 1


@dataclass
class Fleet:
    api: Api
    server: ServerProcess
    sniffer: CommandSniffer
    targets: dict[str, str]  # "v1", "v2", "v3" healthy; "bad" regresses on bad-region inputs
    log_path: Path
    pools: AgentPools

    def releases(self) -> dict[str, str | None]:
        return {d: info.get("release") for d, info in self.api.devices().items()}

    def off_target(self, target: str) -> list[tuple[str, Any, Any]]:
        """(device, release, state) of every device not committed on `target`."""
        devices = self.api.devices()
        if len(devices) < DEVICES:
            return [("(missing devices)", len(devices), DEVICES)]
        return [
            (i, d.get("release"), d.get("state"))
            for i, d in sorted(devices.items())
            if not (d.get("release") == target and d.get("state") in COMMITTED)
        ]

    def all_on(self, target: str) -> bool:
        return not self.off_target(target)

    def wait_all_on(self, target: str, timeout_s: float) -> None:
        """Wait for every device on `target`; else fail naming the devices and their logs."""
        try:
            wait_for(lambda: self.all_on(target), timeout_s, f"every device on {target}")
        except AssertionError as err:
            off = self.off_target(target)
            logs = {d: self.pools.log_lines(d, 4) for d, _, _ in off[:3]}
            raise AssertionError(f"{err}; off target: {off[:20]}; their logs: {logs}") from None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    pools = sniffer = server = None
    try:
        settings = ServerSettings(home=tmp / "server", http_port=free_port(),
                                  broker_host=broker.host, broker_port=broker.port)
        init_home(settings)
        settings = load_settings(settings.home)
        factory = open_database(settings.resolved_database_url)
        packages = {"v1": (1, 0.0), "v2": (2, 0.0), "v3": (3, 0.0), "bad": (4, 50.0)}
        targets = {
            name: publish_package(settings, factory, make_gated_package(tmp / name, seed, k),
                                  "int8").target_path
            for name, (seed, k) in packages.items()
        }
        close_database(factory)
        server = ServerProcess(settings.home, settings.http_host, settings.http_port,
                               tmp / "server.log")
        server.start()
        sniffer = CommandSniffer(broker)
        pools = AgentPools(
            tmp, DEVICES, AGENTS_PER_PROCESS, server_url=settings.resolved_public_url,
            broker_host=broker.host, broker_port=broker.port,
            trusted_root=str(settings.tuf_dir / "metadata" / "1.root.json"),
            agent={"telemetry_interval_s": 5.0, "health_window_s": 1.0,
                   "health_min_samples": 5, "intra_op_threads": 1},
            bad_every=BAD_EVERY, rate_hz=10.0,
        )
        api = Api(settings.resolved_public_url, settings.admin_token_file.read_text().strip())
        fleet = Fleet(api, server, sniffer, targets, tmp / "server.log", pools)
        wait_for(lambda: sum(d["online"] for d in api.devices().values()) >= DEVICES, 90,
                 "every agent online at the server")
        deployed = api.http.post("/api/deployments", json={"target": targets["v1"]})
        assert deployed.status_code == 202, deployed.text
        fleet.wait_all_on(targets["v1"], 120)
        yield fleet
    finally:
        if pools is not None:
            pools.stop()
        if sniffer is not None:
            sniffer.close()
        if server is not None:
            server.stop()
        broker.kill()


def wait_rollout(fleet: Fleet, rollout_id: int, statuses: tuple[str, ...], timeout_s: float
                 ) -> dict:
    return wait_for(
        lambda: (r := fleet.api.rollout(rollout_id)).get("status") in statuses and r,
        timeout_s, f"rollout {rollout_id} to become {' or '.join(statuses)}",
    )


def test_healthy_release_rolls_out_wave_by_wave_to_every_device(fleet: Fleet) -> None:
    target = fleet.targets["v2"]
    started = fleet.api.start_rollout(target=target, soak_s=1, device_timeout_s=90)

    done = wait_rollout(fleet, started["id"], ("completed", "aborted"), 180)

    assert done["status"] == "completed", done
    assert [w["devices"] for w in done["waves"]] == [2, 18, 80, 100][: len(done["waves"])]
    assert done["done"] == DEVICES and done["failed"] == 0
    rows = fleet.api.rollout_devices(started["id"])
    by_wave: dict[int, list[dict]] = {}
    for row in rows:
        by_wave.setdefault(row["wave"], []).append(row)
    for wave in sorted(by_wave)[1:]:  # each wave started only after the previous committed
        previous_done = max(r["resolved_at"] for r in by_wave[wave - 1])
        first_sent = min(r["sent_at"] for r in by_wave[wave] if r["sent_at"])
        assert first_sent >= previous_done + 1.0 - 0.01, f"wave {wave} started before soak"
    fleet.wait_all_on(target, 30)
    sent = fleet.sniffer.updates(target)
    assert len(sent) == DEVICES and set(sent.values()) == {1}  # nobody updated twice


def test_server_killed_mid_rollout_resumes_without_updating_any_device_twice(
    fleet: Fleet,
) -> None:
    target = fleet.targets["v3"]
    started = fleet.api.start_rollout(target=target, soak_s=4, device_timeout_s=90)
    # Kill it between waves (wave 2 committed and soaking, wave 3 next): the server is also
    # the devices' TUF repository, so a kill during downloads fails those updates for real.
    in_wave_2 = wait_for(
        lambda: (r := fleet.api.rollout(started["id"])).get("current_wave", 0) >= 2
        and r["waves"][1]["status"] == "soaking" and r,
        120, "the rollout to soak after wave 2",
        every_s=0.1,
    )

    fleet.server.kill()
    time.sleep(1.0)
    fleet.server.start()
    done = wait_rollout(fleet, started["id"], ("completed", "aborted"), 180)

    assert in_wave_2["status"] == "running" and in_wave_2["done"] < DEVICES
    assert done["status"] == "completed", done
    fleet.wait_all_on(target, 90)
    sent = fleet.sniffer.updates(target)
    assert len(sent) == DEVICES
    twice = {d: n for d, n in sent.items() if n != 1}
    assert not twice, f"devices updated more than once across the restart: {twice}"


def test_release_failing_health_window_on_first_big_wave_aborts_and_rolls_back(
    fleet: Fleet,
) -> None:
    if not agent_supports_health_window():
        pytest.skip("needs the agent's health window (issue 3: AgentConfig.health_window_s, "
                    "rollback to the previous model reported as state rolled_back)")
    before = fleet.releases()
    target = fleet.targets["bad"]
    started = fleet.api.start_rollout(target=target, soak_s=1, device_timeout_s=90,
                                      failure_threshold_pct=10, failure_min_count=2)

    done = wait_rollout(fleet, started["id"], ("aborted", "completed"), 180)

    assert done["status"] == "aborted", done
    assert "failed" in (done["reason"] or "")
    rows = {r["device_id"]: r for r in fleet.api.rollout_devices(started["id"])}
    failed = {d for d, r in rows.items() if r["phase"] == "failed"}
    assert failed and all(bad_region(int(d.split("-")[1])) for d in failed)
    assert all("health" in (rows[d]["reason"] or "") or "rolled_back" in rows[d]["reason"]
               for d in failed)
    updated = {d for d, n in fleet.sniffer.updates(target).items() if n}
    assert updated <= {f"device-{i:03d}" for i in range(20)}  # waves 1-2 only
    assert sum(r["phase"] == "skipped" for r in rows.values()) >= DEVICES - 20
    # Every device ends on the release it ran before: the failing ones rolled themselves
    # back, the committed ones on the server's rollback command.
    wait_for(lambda: fleet.releases() == before, 60, "every device back on its previous release")
    for device_id in updated - failed:
        assert "rollback" in fleet.sniffer.kinds(device_id, target), device_id
