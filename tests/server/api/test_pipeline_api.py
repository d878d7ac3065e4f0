"""`/api/pipeline/runs` over the real app and SQLite (no fleet, no runner: nothing moves a
run but the test): roles, the policy, conflicts, approval and the error table."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline import store
from server.pipeline.machine import STATUSES
from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.pipeline]

DEFAULT_POLICY = REPO_ROOT / "examples" / "policies" / "default.toml"
T0 = 1_700_000_000.0
MAIN_PATH = STATUSES[: STATUSES.index("canary") + 1]  # triggered ... canary


def path_to(status: str) -> tuple[str, ...]:
    """The states a run passes through to reach `status` (refused: after training)."""
    if status == "refused":
        return ("triggered", "training", "refused")
    if status in ("promoted", "rolled_back"):
        return (*MAIN_PATH, status)
    return MAIN_PATH[: MAIN_PATH.index(status) + 1]


@dataclass
class PipelineWorld:
    app: Any
    settings: ServerSettings
    session_factory: sessionmaker
    tokens: dict[str, str]  # role -> secret

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@contextmanager
def pipeline_world(tmp: Path) -> Iterator[PipelineWorld]:
    """A server home with the default release policy, one token per role, and its app."""
    settings = ServerSettings(home=tmp / "server", http_port=0)
    init_home(settings)
    shutil.copy(DEFAULT_POLICY, settings.pipeline_policy_path)
    factory = open_database(settings.resolved_database_url)
    tokens = {"admin": settings.admin_token_file.read_text().strip()}
    with factory.begin() as session:
        for role in ("viewer", "operator"):
            tokens[role] = create_token(session, f"{role}-1", role, "test")[1]
    try:
        yield PipelineWorld(build_app(settings, with_fleet=False), settings, factory, tokens)
    finally:
        close_database(factory)


def seed_run(factory: sessionmaker, model: str, status: str, *, results: dict[str, Any] | None = None,
             step_s: float = 10.0, **fields: Any) -> int:
    """A run of `model` moved along the table to `status`, one state every `step_s` seconds
    from T0 (the last move sets `fields` and merges `results`)."""
    path = path_to(status)
    with factory.begin() as session:
        run = store.create_run(session, model, {"model": model}, {"kind": "manual", "actor": "ops"},
                               "ops", T0, champion_version=1)
        if results:
            store.update_results(run, **results)
        for i, to in enumerate(path[1:], start=1):
            last = i == len(path) - 1
            store.move(session, run, to, f"entered {to}", T0 + i * step_s,
                       **(fields if last else {}))
        return run.id


def end_run(factory: sessionmaker, run_id: int) -> None:
    """Refuse a run still in flight, so its model can start another."""
    with factory.begin() as session:
        store.move(session, store.get_run(session, run_id), "refused", "test over", T0 + 1000)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineWorld]:
    with pipeline_world(tmp_path_factory.mktemp("pipeline-api")) as w:
        yield w


@pytest.fixture
def http(world: PipelineWorld) -> TestClient:
    return TestClient(world.app)


def test_an_operator_starts_a_run_that_is_listed_and_read_with_its_timeline(
        world: PipelineWorld, http: TestClient) -> None:
    op = world.auth("operator")

    created = http.post("/api/pipeline/runs", json={}, headers=op)

    assert created.status_code == 201, created.text
    run = created.json()
    assert (run["model"], run["status"], run["created_by"]) == ("digits", "triggered", "operator-1")
    assert run["trigger"] == {"kind": "manual", "actor": "operator-1"}
    assert run["policy"]["model"] == "digits" and run["policy"]["approval"]["mode"] == "automatic"
    assert [(t["status"], t["message"]) for t in run["timeline"]] == [
        ("triggered", "triggered by operator-1")]
    one = http.get(f"/api/pipeline/runs/{run['id']}", headers=world.auth("viewer")).json()
    assert one["timeline"] == run["timeline"]
    listed = http.get("/api/pipeline/runs", params={"model": "digits"}, headers=op).json()
    assert [r["id"] for r in listed] == [run["id"]] and "timeline" not in listed[0]
    assert http.get("/api/pipeline/runs", params={"status": "training"}, headers=op).json() == []
    audit = http.get("/api/audit", headers=world.auth("admin")).json()
    assert any(a["detail"] == f"pipeline run {run['id']} of digits" for a in audit)
    end_run(world.session_factory, run["id"])


def test_a_second_run_in_flight_for_the_model_is_409(world: PipelineWorld, http: TestClient) -> None:
    op = world.auth("operator")
    first = http.post("/api/pipeline/runs", json={"model": "digits"}, headers=op).json()

    second = http.post("/api/pipeline/runs", json={}, headers=op)

    assert second.status_code == 409
    assert second.json()["error"] == "PipelineConflictError"
    assert f"pipeline run {first['id']}" in second.json()["detail"]
    end_run(world.session_factory, first["id"])


def test_approving_a_run_awaiting_approval_records_the_operator(
        world: PipelineWorld, http: TestClient) -> None:
    run_id = seed_run(world.session_factory, "approve-me", "awaiting_approval")

    approved = http.post(f"/api/pipeline/runs/{run_id}/approve", headers=world.auth("operator"))

    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["approved_by"] == "operator-1" and body["status"] == "awaiting_approval"
    assert body["timeline"][-1]["message"] == "approved by operator-1"
    assert len(body["timeline"]) == len(path_to("awaiting_approval")) + 1


def test_approving_a_run_in_another_state_is_409(world: PipelineWorld, http: TestClient) -> None:
    run_id = seed_run(world.session_factory, "still-training", "training")

    refused = http.post(f"/api/pipeline/runs/{run_id}/approve", headers=world.auth("operator"))

    assert refused.status_code == 409
    assert refused.json()["error"] == "PipelineStateError"
    assert "training, not awaiting_approval" in refused.json()["detail"]


def test_unknown_runs_are_404(world: PipelineWorld, http: TestClient) -> None:
    op = world.auth("operator")
    assert http.get("/api/pipeline/runs/999999", headers=op).status_code == 404
    missing = http.post("/api/pipeline/runs/999999/approve", headers=op)
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]


def test_viewers_read_but_cannot_start_or_approve(world: PipelineWorld, http: TestClient) -> None:
    run_id = seed_run(world.session_factory, "viewer-sees", "awaiting_approval")
    viewer = world.auth("viewer")

    assert http.get("/api/pipeline/runs", headers=viewer).status_code == 200
    assert http.post("/api/pipeline/runs", json={}, headers=viewer).status_code == 403
    assert http.post(f"/api/pipeline/runs/{run_id}/approve", headers=viewer).status_code == 403
    assert http.get("/api/pipeline/runs").status_code == 401
    assert http.get(f"/api/pipeline/runs/{run_id}", headers=viewer).json()["approved_by"] is None


def test_a_model_the_policy_does_not_govern_or_a_bad_policy_is_400(
        world: PipelineWorld, http: TestClient) -> None:
    op, policy = world.auth("operator"), world.settings.pipeline_policy_path

    other = http.post("/api/pipeline/runs", json={"model": "cats"}, headers=op)
    policy.write_text('model = "digits"\n[canary]\nstep_weights = [50.0]\n')
    try:
        broken = http.post("/api/pipeline/runs", json={}, headers=op)
    finally:
        shutil.copy(DEFAULT_POLICY, policy)

    assert other.status_code == 400 and "governs model 'digits', not 'cats'" in other.json()["detail"]
    assert broken.status_code == 400 and "canary.step_weights" in broken.json()["detail"]
    assert http.get("/api/pipeline/runs", params={"model": "digits", "status": "triggered"},
                    headers=op).json() == []


def test_bad_query_and_body_values_are_422(world: PipelineWorld, http: TestClient) -> None:
    op = world.auth("operator")
    assert http.get("/api/pipeline/runs", params={"status": "exploded"}, headers=op).status_code == 422
    assert http.get("/api/pipeline/runs", params={"limit": 0}, headers=op).status_code == 422
    assert http.post("/api/pipeline/runs", json={"modle": "digits"}, headers=op).status_code == 422
    assert http.get("/api/pipeline/runs/0", headers=op).status_code == 422


def test_the_api_returns_every_field_of_run_json(world: PipelineWorld, http: TestClient) -> None:
    run_id = seed_run(world.session_factory, "shape", "canary", results={"gates": []})
    with world.session_factory() as session:
        expected = store.run_json(store.get_run(session, run_id), store.steps(session, run_id))

    got = http.get(f"/api/pipeline/runs/{run_id}", headers=world.auth("viewer")).json()

    assert got == expected
