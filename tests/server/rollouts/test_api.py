"""The rollout REST API over the real app and SQLite: roles, conflicts, audit, errors."""

from __future__ import annotations

import pytest

from tests.server.console.support import console_login, console_post
from tests.server.rollouts.conftest import ApiWorld

# The app's fleet side dials a closed broker port in the background: a real socket.
pytestmark = [pytest.mark.rollouts, pytest.mark.integration]


def test_rollout_lifecycle_conflict_and_audit(api_world: ApiWorld) -> None:
    http, target = api_world.client, api_world.targets[1]
    op = api_world.auth("operator")
    labels = http.put("/api/devices/dev-000/labels", json={"group": "lab", "tags": ["eu"]},
                      headers=op)
    assert labels.status_code == 200, labels.text
    assert http.get("/api/devices", params={"group": "lab"}, headers=op).json()[0]["tags"] == ["eu"]

    created = http.post("/api/rollouts", json={"target": target, "group": "lab", "soak_s": 0,
                                               "max_in_flight": 50}, headers=op)
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert rollout["devices"] == 1 and rollout["status"] == "running"
    assert rollout["policy"]["max_in_flight"] == 50

    second = http.post("/api/rollouts", json={"target": target, "group": "lab"}, headers=op)
    assert second.status_code == 409
    assert f"rollout {rollout['id']}" in second.json()["detail"]
    fleet_wide = http.post("/api/rollouts", json={"target": target}, headers=op)
    assert fleet_wide.status_code == 409

    rid = rollout["id"]
    assert http.post(f"/api/rollouts/{rid}/pause", headers=op).json()["status"] == "paused"
    assert http.post(f"/api/rollouts/{rid}/pause", headers=op).status_code == 409
    assert http.post(f"/api/rollouts/{rid}/resume", headers=op).json()["status"] == "running"
    assert http.post(f"/api/rollouts/{rid}/abort", headers=op).json()["status"] == "aborting"

    audit = http.get("/api/audit", headers=op).json()
    actions = [(a["actor"], a["resource"], a["outcome"]) for a in audit]
    assert ("operator-1", f"/api/rollouts/{rid}/abort", "ok") in actions
    assert ("operator-1", "/api/rollouts", "refused") in actions  # the 409


def test_viewer_reads_but_cannot_mutate_and_anonymous_is_refused(api_world: ApiWorld) -> None:
    http, viewer = api_world.client, api_world.auth("viewer")
    assert http.get("/api/rollouts", headers=viewer).status_code == 200
    assert http.get("/api/devices", headers=viewer).status_code == 200
    body = {"target": api_world.targets[1], "group": "nobody"}
    assert http.post("/api/rollouts", json=body, headers=viewer).status_code == 403
    assert http.put("/api/devices/dev-001/labels", json={"group": "x"},
                    headers=viewer).status_code == 403
    assert http.post("/api/tokens", json={"name": "x"}, headers=viewer).status_code == 403
    for path in ("/api/rollouts", "/api/devices", "/api/models", "/api/audit", "/api/groups"):
        assert http.get(path).status_code == 401, path
    assert http.post("/api/rollouts", json=body).status_code == 401
    denied = http.get("/api/audit", headers=api_world.auth("admin")).json()
    assert any(a["outcome"] == "denied" and a["actor"] == "viewer-1" for a in denied)


def test_bad_requests_are_4xx(api_world: ApiWorld) -> None:
    http, op = api_world.client, api_world.auth("operator")
    cases = [
        ("post", "/api/rollouts", {"target": "../etc"}),
        ("post", "/api/rollouts", {"target": "nope/1/model.onnx", "group": "g1"}),
        ("post", "/api/rollouts", {"target": api_world.targets[1], "waves_pct": [50, 10]}),
        ("post", "/api/rollouts", {"target": api_world.targets[1], "group": "empty-group"}),
        ("post", "/api/rollouts", {"target": api_world.targets[1], "extra": 1}),
        ("post", "/api/rollouts", {"target": api_world.targets[1], "max_in_flight": 0}),
        ("post", "/api/rollouts", {"target": api_world.targets[1], "max_in_flight": "many"}),
    ]
    for method, path, body in cases:
        response = getattr(http, method)(path, json=body, headers=op)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
    assert http.get("/api/rollouts/99999999999999", headers=op).status_code == 422
    assert http.get("/api/rollouts/12345", headers=op).status_code == 404
    assert http.post("/api/rollouts/12345/pause", headers=op).status_code == 404


def test_tokens_are_created_listed_and_revoked_by_admin(api_world: ApiWorld) -> None:
    http, admin = api_world.client, api_world.auth("admin")
    created = http.post("/api/tokens", json={"name": "ci", "role": "operator", "kind": "service", "owner": "ci pipeline"}, headers=admin)
    assert created.status_code == 201
    secret = created.json()["token"]
    assert http.get("/api/rollouts", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert http.post("/api/tokens", json={"name": "ci", "kind": "service", "owner": "ci pipeline"}, headers=admin).status_code == 409
    assert http.delete("/api/tokens/ci", headers=admin).status_code == 200
    assert http.get("/api/rollouts", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert "token" not in str(http.get("/api/tokens", headers=admin).json()[0].keys() - {"name"})


def test_console_login_and_pages(api_world: ApiWorld) -> None:
    http = api_world.client
    assert http.get("/console/", follow_redirects=False).status_code == 303
    console_login(http, api_world.tokens["viewer"])
    page = http.get("/console/")
    assert page.status_code == 200 and "Versions across the fleet" in page.text
    assert "Start a rollout" not in page.text  # viewers get no buttons
    assert http.get("/console/devices/dev-000").status_code == 200
    assert http.get("/console/static/console.js").status_code == 200
    assert "http" not in http.get("/console/").text.split("<main>")[0].replace("http-equiv", "")
    assert console_post(http, "/console/logout").headers["location"] == "/console/login"
    assert http.get("/console/", follow_redirects=False).status_code == 303
    http.cookies.clear()
    del http.headers["origin"]
