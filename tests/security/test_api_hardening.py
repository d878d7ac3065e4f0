"""Issue 16 item 8, the API: what an anonymous caller, a scraper or a lying device could get
out of the server, each tried on a real server (uvicorn, SQLite) and refused.

Each test first sends the attacker's requests (a flood of anonymous POSTs to made-up
routes, a hash-addressed download of a blob nobody published, a device reporting a release
name of its own making, a /docs page pulling a CDN's script), then shows what the server
answers now and that legitimate use still works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from server.app.build import build_app
from server.db.tables import AuditEntry, Device
from tests.security.http_world import HttpWorld, http_world

pytestmark = [pytest.mark.security, pytest.mark.integration]

FLOOD = 100


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpWorld]:
    with http_world(tmp_path_factory.mktemp("api-security")) as w:
        yield w


def audit_rows(world: HttpWorld) -> int:
    with world.session_factory() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry)) or 0


def test_anonymous_posts_to_unknown_routes_write_no_audit_rows(world: HttpWorld) -> None:
    before = audit_rows(world)
    with world.client() as anonymous:
        answers = {anonymous.post(f"/api/no-such-thing/{i}").status_code for i in range(FLOOD)}
        answers |= {
            anonymous.delete(f"/console/nowhere/{i}", headers={"origin": world.url}).status_code
            for i in range(FLOOD // 4)
        }
        assert audit_rows(world) == before

        # What is recorded still is: a refused call on a real route, and a known caller's.
        denied = anonymous.post("/api/rollouts", json={"target": world.release.target_path})
        mine = anonymous.post("/api/rollouts/999999/pause", headers=world.bearer("operator"))

    assert answers == {404} and denied.status_code == 401 and mine.status_code == 404
    with world.session_factory() as session:
        entries = list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.id > before).order_by(AuditEntry.id)
            )
        )
    assert [(e.actor, e.resource, e.outcome) for e in entries] == [
        ("anonymous", "/api/rollouts", "denied"),
        ("operator person (token operator)", "/api/rollouts/999999/pause", "refused"),
    ]


def test_tuf_targets_serves_only_signed_targets_at_their_signed_path(world: HttpWorld) -> None:
    report = json.loads((world.package_dir / "report.json").read_text())
    fp32 = report["sha256"]["fp32"]  # stored by the registry, never published as a target
    weights, _ = world.app.state.artifact_store.put_bytes(b"training weights, not for devices")
    signed = world.release.artifact_sha256
    folder = world.release.target_path.rsplit("/", 1)[0]  # digits/1
    name = world.release.target_path.rsplit("/", 1)[1]  # model.int8.onnx

    with world.client() as anyone:
        stolen = [
            anyone.get(f"/tuf/targets/{folder}/{fp32}.model.fp32.onnx"),
            anyone.get(f"/tuf/targets/{folder}/{weights}.weights.bin"),
            anyone.get(f"/tuf/targets/elsewhere/{signed}.{name}"),  # signed blob, wrong path
            anyone.head(f"/tuf/targets/{folder}/{fp32}.{name}"),
        ]  # right path, wrong hash
        served = anyone.get(f"/tuf/targets/{folder}/{signed}.{name}")

    assert [r.status_code for r in stolen] == [404] * 4
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == signed


def test_metrics_label_only_releases_the_registry_knows(world: HttpWorld) -> None:
    with world.session_factory.begin() as session:  # a device's status, in its own words
        session.execute(
            update(Device)
            .where(Device.device_id == "dev-2")
            .values(release='pwned/9/"evil"\nedgeops_fake 1')
        )

    with world.client() as scraper:
        text = scraper.get("/metrics").text

    lines = [line for line in text.splitlines() if line.startswith("edgeops_fleet_release_devices")]
    assert f'edgeops_fleet_release_devices{{release="{world.release.target_path}"}} 1.0' in lines
    assert 'edgeops_fleet_release_devices{release="unknown"} 1.0' in lines
    assert "pwned" not in text and "edgeops_fake" not in text


def test_metrics_can_require_a_token(world: HttpWorld) -> None:
    world.app.state.settings = dataclasses.replace(world.settings, metrics_token=True)
    try:
        anonymous = httpx.get(f"{world.url}/metrics")
        scraper = httpx.get(f"{world.url}/metrics", headers=world.bearer("viewer"))
    finally:
        world.app.state.settings = world.settings
    assert anonymous.status_code == 401
    assert scraper.status_code == 200 and "edgeops_fleet_devices" in scraper.text


def test_docs_are_off_by_default_so_no_cdn_script_is_served(world: HttpWorld) -> None:
    with world.client() as browser:
        pages = [browser.get(path) for path in ("/docs", "/redoc", "/docs/oauth2-redirect")]
        spec = browser.get("/openapi.json")  # the spec itself is plain JSON, kept for clients

    assert [p.status_code for p in pages] == [404] * 3
    assert all("cdn.jsdelivr.net" not in p.text for p in pages)
    assert spec.status_code == 200 and "/api/rollouts" in spec.text


def test_docs_served_only_when_asked_and_then_outside_the_policy(world: HttpWorld) -> None:
    asked = TestClient(
        build_app(dataclasses.replace(world.settings, api_docs=True), with_fleet=False)
    )

    docs, health = asked.get("/docs"), asked.get("/healthz")

    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "content-security-policy" not in docs.headers  # its CDN script would be blocked
    assert "frame-ancestors 'none'" in health.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"


def test_api_responses_carry_the_hardening_headers(world: HttpWorld) -> None:
    with world.client() as client:
        answers = [
            client.get("/healthz"),
            client.get("/api/rollouts"),
            client.get("/api/rollouts", headers=world.bearer("viewer")),
            client.get("/tuf/metadata/timestamp.json"),
        ]

    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["x-frame-options"] == "DENY", answer.url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["referrer-policy"] == "same-origin"
