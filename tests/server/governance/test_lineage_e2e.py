"""Acceptance (issue 14, item 3): `edgeops lineage device <id> --at T --json` answers what the
test did, on a real server, Mosquitto and two agents.

v1 is published and rolled out to both devices; v2 is published and rolled out in two waves
with a long soak, so after wave 0 one device runs v2 and the other still v1; the rollout is
then aborted with `edgeops rollout abort` and the wave-0 device rolls back to v1. Wall-clock
times are taken before the devices appear, before any release, on v1, on v2 and after the
rollback; each answer must name the release the test put there at that moment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import Agent, AgentConfig, init_agent_home
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.cli_support import run_edgeops
from tests.server.helpers import live_server, make_package

pytestmark = [pytest.mark.governance, pytest.mark.integration]

DEVICES = ("lin-1", "lin-2")


def wait_for(probe: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def stamp() -> str:
    """Now, as the ISO 8601 the CLI takes; a short pause so it falls strictly between events."""
    time.sleep(0.3)
    moment = datetime.now(UTC).isoformat()
    time.sleep(0.3)
    return moment


class Fleet:
    def __init__(self, url: str, home: Path, http: httpx.Client) -> None:
        self.url, self.home, self.http = url, home, http

    def recorded_release(self, device_id: str) -> str | None | bool:
        """The release in the device's newest status-history row (False: no row yet)."""
        response = self.http.get(f"/api/devices/{device_id}/history", params={"limit": 1})
        rows = response.json() if response.status_code == 200 else []
        return rows[0]["release"] if rows else False

    def wait_recorded(self, device_id: str, release: str | None) -> None:
        wait_for(lambda: self.recorded_release(device_id) == release, what=f"{device_id} on {release}")

    def rollout(self, target: str, **policy: Any) -> int:
        response = self.http.post("/api/rollouts", json={"target": target, **policy})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def status(self, rollout_id: int) -> str:
        return str(self.http.get(f"/api/rollouts/{rollout_id}").json()["status"])

    def edgeops(self, *args: str) -> Any:
        result = run_edgeops(*args, "--home", str(self.home), "--server", self.url, "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[Fleet, dict[str, Any]]]:
    settings = ServerSettings(home=tmp_path / "server", broker_host=mosquitto.host,
                              broker_port=mosquitto.port)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    app = build_app(settings)
    with live_server(app) as url, httpx.Client(
        base_url=url, timeout=30,
        headers={"Authorization": f"Bearer {read_admin_token(settings)}"},
    ) as http:
        # The runner records status changes from its second tick on: let it take one first.
        wait_for(lambda: getattr(app.state, "rollout_runner", None) is not None
                 and app.state.rollout_runner.stats.ticks >= 1, what="the rollout runner ticking")
        yield Fleet(url, settings.home, http), {"settings": settings, "factory": factory,
                                                "mosquitto": mosquitto, "tmp": tmp_path}
    close_database(factory)


def start_agent(env: dict[str, Any], url: str, device_id: str) -> Agent:
    settings: ServerSettings = env["settings"]
    config = AgentConfig(home=env["tmp"] / device_id, device_id=device_id, server_url=url,
                         broker_host=env["mosquitto"].host, broker_port=env["mosquitto"].port,
                         telemetry_interval_s=5.0, health_window_s=0.5, health_min_samples=0)
    init_agent_home(config.home, config,
                    (settings.tuf_dir / "metadata" / "1.root.json").read_bytes())
    return Agent(config)


def test_lineage_before_during_and_after_a_rollout_and_a_rollback(
    fleet: tuple[Fleet, dict[str, Any]],
) -> None:
    api, env = fleet
    publish = lambda seed: publish_package(  # noqa: E731
        env["settings"], env["factory"], make_package(env["tmp"] / f"pkg{seed}", seed=seed), "int8")
    times: dict[str, str] = {"unseen": stamp()}
    agents = [start_agent(env, api.url, d) for d in DEVICES]
    for agent in agents:
        agent.__enter__()
    try:
        for device_id in DEVICES:
            api.wait_recorded(device_id, None)
        times["no_release"] = stamp()

        v1 = publish(1)
        first = api.rollout(v1.target_path, waves_pct=[100], soak_s=0)
        wait_for(lambda: api.status(first) == "completed", what="the v1 rollout completing")
        for device_id in DEVICES:
            api.wait_recorded(device_id, v1.target_path)
        times["v1"] = stamp()

        v2 = publish(2)
        second = api.rollout(v2.target_path, waves_pct=[50], soak_s=600)
        assignments = wait_for(lambda: [
            d for d in api.http.get(f"/api/rollouts/{second}/devices").json() if d["wave"] == 1
        ], what="the v2 rollout assigning its first wave")
        canary = assignments[0]["device_id"]
        other = next(d for d in DEVICES if d != canary)
        wait_for(lambda: api.http.get(f"/api/rollouts/{second}/devices").json()[0]["phase"]
                 == "succeeded", what=f"{canary} committing v2")
        api.wait_recorded(canary, v2.target_path)
        times["v2"] = stamp()

        aborted = api.edgeops("rollout", "abort", str(second))
        assert aborted["status"] in ("aborting", "aborted")
        wait_for(lambda: api.status(second) == "aborted", what="the v2 rollout aborted")
        api.wait_recorded(canary, v1.target_path)
        times["after_rollback"] = stamp()
    finally:
        for agent in agents:
            agent.__exit__(None, None, None)

    def lineage(device_id: str, moment: str) -> dict[str, Any]:
        return api.edgeops("lineage", "device", device_id, "--at", moment)

    unseen = lineage(canary, times["unseen"])
    assert unseen["status"] == "not_seen_yet" and unseen["release"] is None
    expected = {"no_release": None, "v1": v1.target_path, "v2": v2.target_path,
                "after_rollback": v1.target_path}
    answers = {moment: lineage(canary, times[moment]) for moment in expected}
    assert {m: (a["status"], a["release"]) for m, a in answers.items()} == {
        m: ("ran", release) for m, release in expected.items()}

    on_v2 = answers["v2"]
    assert times["v1"] < on_v2["since"] < times["v2"] < on_v2["until"] < times["after_rollback"]
    assert on_v2["arrived_by"]["how"] == "update" and on_v2["arrived_by"]["rollout"] == second
    assert on_v2["lineage"]["model_version"]["version"] == v2.version
    assert on_v2["lineage"]["signing"]["targets_version"] == v2.targets_version
    assert on_v2["lineage"]["published_by"]["kind"] == "manual"
    back = answers["after_rollback"]
    assert back["arrived_by"]["how"] == "rollback" and back["arrived_by"]["rollout"] == second
    assert back["until"] is None
    assert lineage(other, times["v2"])["release"] == v1.target_path  # wave 1 never started

    by_release = api.edgeops("lineage", "release", f"digits:{v2.version}")
    assert [d["device_id"] for d in by_release["devices"]] == [canary]
    assert by_release["devices"][0]["intervals"] == [
        {"release": v2.target_path, "since": on_v2["since"], "until": on_v2["until"]}]
    assert by_release["approval"]["rollouts_created_by"] == ["admin"]
