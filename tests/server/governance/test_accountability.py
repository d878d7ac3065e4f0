"""Accountability (issue 14 item 5): every token belongs to a named person or a service,
only people approve, and the console shows who did what on the rollout and pipeline pages.

The real app over SQLite (no fleet, no runner: nothing moves a run but the test)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from edgeops.errors import ConfigError
from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import (
    ACTOR_MAX_CHARS,
    ADMIN_OWNER,
    PersonRequiredError,
    actor_label,
    create_token,
)
from server.cli import fleet
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import ApiToken, AuditEntry, Rollout
from server.governance import audit_chain
from server.pipeline import service, store
from server.pipeline.machine import STATUSES
from server.rollouts.controller import RolloutPolicy
from tests.cli_support import REPO_ROOT, run_edgeops
from tests.server.console.support import console_login, console_post

pytestmark = [pytest.mark.governance]

T0 = 1_700_000_000.0
APPROVAL_PATH = STATUSES[: STATUSES.index("awaiting_approval") + 1]  # triggered ... awaiting


@dataclass
class World:
    http: TestClient
    session_factory: sessionmaker
    secrets: dict[str, str]  # token name -> secret

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}

    def console(self, name: str) -> TestClient:
        """A console client logged in (by its login form) with token `name`."""
        return console_login(TestClient(self.http.app), self.secrets[name])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A home with the default release policy, the admin, a person operator (Ada) and a
    service operator (the CI bot)."""
    tmp = tmp_path_factory.mktemp("accountability")
    settings = ServerSettings(home=tmp / "server", http_port=0)
    init_home(settings)
    shutil.copy(REPO_ROOT / "examples" / "policies" / "default.toml",
                settings.pipeline_policy_path)
    factory = open_database(settings.resolved_database_url)
    secrets = {"admin": settings.admin_token_file.read_text().strip()}
    with factory.begin() as session:
        secrets["ada"] = create_token(session, "ada", "operator", "test", kind="person",
                                      owner="Ada Lovelace")[1]
        secrets["ci"] = create_token(session, "ci", "operator", "test", kind="service",
                                     owner="ci deploy bot")[1]
    try:
        yield World(TestClient(build_app(settings, with_fleet=False)), factory, secrets)
    finally:
        close_database(factory)


def awaiting_run(factory: sessionmaker, model: str) -> int:
    """A run of `model` moved along the table to awaiting_approval, then left there."""
    with factory.begin() as session:
        run = store.create_run(session, model, {"model": model},
                               {"kind": "manual", "actor": "ops"}, "ops", T0, champion_version=1)
        for i, status in enumerate(APPROVAL_PATH[1:], start=1):
            store.move(session, run, status, f"entered {status}", T0 + 10 * i)
        return run.id


def audit_rows(factory: sessionmaker, **where: Any) -> list[AuditEntry]:
    with factory() as session:
        stmt = select(AuditEntry).order_by(AuditEntry.id)
        for column, value in where.items():
            stmt = stmt.where(getattr(AuditEntry, column) == value)
        return list(session.scalars(stmt))


# --- who a token belongs to -------------------------------------------------------------


def test_actor_label_names_the_person_and_the_token_within_the_column() -> None:
    assert actor_label("ada", "Ada Lovelace") == "Ada Lovelace (token ada)"
    assert actor_label("legacy", None) == "legacy"
    long = actor_label("ada", "A" * 200)
    assert len(long) == ACTOR_MAX_CHARS and long.endswith("… (token ada)")


def test_the_domain_refuses_an_unknown_kind_and_a_blank_owner(world: World) -> None:
    with world.session_factory() as session:
        with pytest.raises(ConfigError, match="kind must be one of person, service"):
            create_token(session, "x1", "viewer", "test", kind="robot",  # type: ignore[arg-type]
                         owner="R2")
        with pytest.raises(ConfigError, match="a service token needs an owner"):
            create_token(session, "x2", "viewer", "test", kind="service", owner="   ")
        session.rollback()


@pytest.mark.parametrize(("body", "missing"), [
    ({"name": "bob", "role": "viewer", "owner": "Bob"}, "kind"),
    ({"name": "bob", "role": "viewer", "kind": "person"}, "owner"),
    ({"name": "bob", "role": "viewer", "kind": "person", "owner": "  "}, "owner"),
    ({"name": "bob", "role": "viewer", "kind": "robot", "owner": "Bob"}, "kind"),
])
def test_creating_a_token_over_http_needs_kind_and_owner(world: World, body: dict[str, str],
                                                          missing: str) -> None:
    response = world.http.post("/api/tokens", json=body, headers=world.bearer("admin"))

    assert response.status_code == 422, response.text
    assert [err["loc"][-1] for err in response.json()["detail"]] == [missing]


def test_a_created_token_and_the_listing_show_kind_and_owner(world: World) -> None:
    created = world.http.post(
        "/api/tokens", json={"name": "grace", "role": "viewer", "kind": "person",
                             "owner": " Grace Hopper "}, headers=world.bearer("admin"))

    assert created.status_code == 201, created.text
    assert (created.json()["kind"], created.json()["owner"]) == ("person", "Grace Hopper")
    listed = {t["name"]: (t["kind"], t["owner"], t["role"])
              for t in world.http.get("/api/tokens", headers=world.bearer("admin")).json()}
    assert listed["grace"] == ("person", "Grace Hopper", "viewer")
    assert listed["ci"] == ("service", "ci deploy bot", "operator")
    assert listed["ada"] == ("person", "Ada Lovelace", "operator")


class _InProcessClient:
    """The CLI's ApiClient surface over the test app, as the admin."""

    def __init__(self, world: World) -> None:
        self.world = world

    def post(self, path: str, **kwargs: Any) -> Any:
        response = self.world.http.post(path, headers=self.world.bearer("admin"), **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.world.http.get(path, headers=self.world.bearer("admin"), **kwargs).json()


def test_the_cli_creates_a_service_token_and_lists_kind_and_owner(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "connect", lambda *_args: _InProcessClient(world))
    runner = CliRunner()

    created = runner.invoke(fleet.app, ["tokens", "create", "nightly", "--service",
                                        "nightly retrain job", "--role", "operator"])
    listed = runner.invoke(fleet.app, ["tokens", "list"])

    assert created.exit_code == 0, created.output
    assert "token nightly (operator, service 'nightly retrain job'): eo_" in created.output
    line = next(row for row in listed.output.splitlines() if row.startswith("nightly "))
    assert line.split()[:4] == ["nightly", "operator", "service", "live"]
    assert line.endswith("nightly retrain job")
    with world.session_factory() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "nightly"))
        assert row is not None and (row.kind, row.owner) == ("service", "nightly retrain job")


@pytest.mark.parametrize("owners", [[], ["--person", "Ada", "--service", "bot"]])
def test_the_cli_refuses_a_token_without_exactly_one_owner(owners: list[str]) -> None:
    result = run_edgeops("fleet", "tokens", "create", "someone", *owners,
                         "--server", "http://127.0.0.1:9", timeout=60,
                         env={**os.environ, "EDGEOPS_TOKEN": "unused"})

    assert result.returncode == 2, result.stderr
    assert "exactly one of --person" in result.stderr and "--service" in result.stderr


# --- only people approve --------------------------------------------------------------


def test_a_service_token_cannot_approve_over_http(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "svc-model")

    refused = world.http.post(f"/api/pipeline/runs/{run_id}/approve", headers=world.bearer("ci"))

    assert refused.status_code == 403, refused.text
    assert refused.json() == {
        "error": "PersonRequiredError",
        "detail": f"ci deploy bot (token ci) is a service token: only a person may approve "
                  f"pipeline run {run_id}; use a token that belongs to a named person"}
    run = service.get_run(world.session_factory, run_id)
    assert (run["status"], run["approved_by"]) == ("awaiting_approval", None)
    assert audit_rows(world.session_factory, target=f"pipeline run {run_id}",
                      action="pipeline.approve") == []
    [denied] = audit_rows(world.session_factory,
                          resource=f"/api/pipeline/runs/{run_id}/approve")
    assert (denied.outcome, denied.status_code) == ("denied", 403)


def test_the_domain_refuses_a_service_before_touching_the_run(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "svc-domain")

    with pytest.raises(PersonRequiredError, match="only a person may approve"):
        service.approve_run(world.session_factory, run_id, "bot", kind="service")

    assert service.get_run(world.session_factory, run_id)["approved_by"] is None


def test_a_person_approves_and_the_audit_log_names_them(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "person-model")

    approved = world.http.post(f"/api/pipeline/runs/{run_id}/approve",
                               headers=world.bearer("ada"))

    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == "Ada Lovelace (token ada)"
    assert approved.json()["timeline"][-1]["message"] == "approved by Ada Lovelace (token ada)"
    [entry] = audit_rows(world.session_factory, target=f"pipeline run {run_id}",
                         action="pipeline.approve")
    assert (entry.actor, entry.role, entry.action, entry.outcome) == (
        "Ada Lovelace (token ada)", "operator", "pipeline.approve", "ok")
    assert entry.entry_hash is not None  # written through the chain


def test_the_admin_token_is_a_person_owned_by_init(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "admin-model")

    approved = world.http.post(f"/api/pipeline/runs/{run_id}/approve",
                               headers=world.bearer("admin"))

    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == f"{ADMIN_OWNER} (token admin)"


# --- the console ----------------------------------------------------------------------


def test_the_console_hides_approve_from_a_service_and_refuses_its_post(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "console-svc")
    bot = world.console("ci")

    shown = bot.get(f"/console/pipeline/{run_id}")
    posted = console_post(bot, f"/console/pipeline/{run_id}/approve")

    assert shown.status_code == 200
    assert 'id="approval-needs-person"' in shown.text and 'id="btn-approve"' not in shown.text
    assert posted.status_code == 403
    assert "is a service token: only a person may approve" in posted.text
    assert service.get_run(world.session_factory, run_id)["approved_by"] is None


def test_the_pipeline_run_page_shows_who_approved_in_recent_actions(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "console-person")
    other_id = awaiting_run(world.session_factory, "console-other")
    ada = world.console("ada")
    assert 'id="btn-approve"' in ada.get(f"/console/pipeline/{run_id}").text

    posted = console_post(ada, f"/console/pipeline/{run_id}/approve")
    world.http.post(f"/api/pipeline/runs/{other_id}/approve", headers=world.bearer("admin"))
    shown = ada.get(f"/console/pipeline/{run_id}")

    assert posted.status_code == 303
    assert 'id="approved-by">Approved by Ada Lovelace (token ada)' in shown.text
    actions = shown.text.split('id="recent-actions"', 1)[1].split("</table>", 1)[0]
    # The run's own entries (triggered, its moves), the approval and the console POST.
    assert actions.count("pipeline.approve") == 1 and "pipeline.triggered" in actions
    assert "Ada Lovelace (token ada)" in actions
    assert f"/console/pipeline/{run_id}/approve" in actions
    assert ADMIN_OWNER not in actions and f"run {other_id}" not in actions


def test_the_rollout_page_shows_recent_actions_about_that_rollout_only(world: World) -> None:
    with world.session_factory.begin() as session:
        rollouts = [Rollout(target="digits/1/int8/model.onnx", policy=RolloutPolicy().to_json(),
                            status="paused", created_by="ops") for _ in range(12)]
        session.add_all(rollouts)
        session.flush()
        first, second, twelfth = rollouts[0].id, rollouts[1].id, rollouts[11].id
        audit_chain.append(session, actor="pipeline runner", role=None,
                           action="rollout.verdict", resource="rollout",
                           target=f"rollout {first}", detail="canary healthy: promote")
        audit_chain.append(session, actor="someone else", role="operator", action="POST",
                           resource=f"/api/rollouts/{twelfth}/pause", status_code=200)
    ada = world.console("ada")
    assert '<p id="no-actions">' in ada.get(f"/console/rollouts/{second}").text

    resumed = console_post(ada, f"/console/rollouts/{first}/resume")
    assert resumed.status_code == 303, resumed.text
    shown = ada.get(f"/console/rollouts/{first}")

    actions = shown.text.split('id="recent-actions"', 1)[1].split("</table>", 1)[0]
    assert "canary healthy: promote" in actions and "pipeline runner" in actions
    resume_row = next(row for row in actions.split("<tr>") if f"rollouts/{first}/resume" in row)
    assert "<td>Ada Lovelace (token ada)</td><td>operator</td><td>POST</td>" in resume_row
    assert "someone else" not in actions


def test_the_chain_still_verifies_after_approvals_and_console_actions(world: World) -> None:
    run_id = awaiting_run(world.session_factory, "chain-model")
    world.http.post(f"/api/pipeline/runs/{run_id}/approve", headers=world.bearer("ada"))
    key = Ed25519PrivateKey.generate()

    with world.session_factory() as session:
        verdict = audit_chain.verify(session, key.public_key())

    assert verdict.ok, verdict.problem
    assert verdict.entries >= 3 and verdict.legacy_entries == 0
