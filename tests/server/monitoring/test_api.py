"""`/api/monitor/*`, `/metrics` and the CLI's rendering, over the real app and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.cli.monitor import render_cohorts, render_events, render_windows
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from tests.server.monitoring.synthetic import make_fleet
from tests.server.monitoring.test_runner import T0, WINDOW_S, _batches, _runner, _setup

pytestmark = pytest.mark.monitor


@dataclass
class World:
    client: TestClient
    viewer: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = ServerSettings(home=tmp_path_factory.mktemp("monitor") / "server", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    fleet = make_fleet(seed=21)
    _setup(factory, _batches(fleet, 0, set()) + _batches(fleet, 1, {"dev-e1", "dev-e2"}))
    _runner(factory, fleet.reference, T0 + 3 * WINDOW_S).tick()
    with factory.begin() as session:
        secret = create_token(session, "viewer-1", "viewer", "test")[1]
    app = build_app(settings, with_fleet=False)
    with TestClient(app) as client:
        yield World(client, {"Authorization": f"Bearer {secret}"})
    close_database(factory)


def test_cohorts_windows_scores_and_events_need_a_viewer(world: World) -> None:
    http = world.client
    for path in ("cohorts", "windows", "scores", "events"):
        assert http.get(f"/api/monitor/{path}").status_code == 401, path

    cohorts = http.get("/api/monitor/cohorts", headers=world.viewer).json()
    windows = http.get("/api/monitor/windows", params={"cohort": "digits/1@east"},
                       headers=world.viewer).json()
    scores = http.get("/api/monitor/scores", params={"limit": 1}, headers=world.viewer).json()
    events = http.get("/api/monitor/events", params={"kind": "drift_detected"},
                      headers=world.viewer).json()

    by_cohort = {c["cohort"]: c for c in cohorts}
    assert by_cohort["digits/1@east"]["drift_alarmed"] is True
    assert by_cohort["digits/1@west"]["drift_alarmed"] is False
    assert [w["verdict"] for w in windows] == ["drift", "ok"]  # newest first
    assert set(scores[0]["scores"]["statistics"]) >= {"psi", "js", "hellinger", "wasserstein", "ks"}
    assert "digits/1@east" in {e["cohort"] for e in events}
    assert all(e["kind"] == "drift_detected" for e in events)
    bad = http.get("/api/monitor/events", params={"kind": "nope"}, headers=world.viewer)
    assert bad.status_code == 422

    assert "digits/1@east" in render_cohorts(cohorts)
    assert "drift" in render_windows(windows)
    assert "drift_detected" in render_events(events)
    assert render_events([]) == "no monitor events"


def test_metrics_export_drift_scores_without_device_labels(world: World) -> None:
    text = world.client.get("/metrics").text

    assert 'edgeops_drift_score{cohort="east",model="digits",statistic="psi",version="1"}' in text
    assert 'edgeops_drift_events_total{kind="drift_detected"}' in text
    assert "dev-e1" not in text
