"""The fleet routers (devices, deployments, ingest) mounted in the real app (create_app),
over a SQLite file and Mosquitto."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from edgeops.messages import Command, DeviceStatus, decode
from server.api.routes import deployments, devices
from server.api.routes import ingest as ingest_routes
from server.api.routes.training_runs import router as training_router
from server.app.fleet_lifespan import fleet_lifespan
from server.app.http_app import create_app
from server.config.settings import ServerSettings
from server.db.tables import Artifact, Model, ModelVersion, Release, TrainingRun
from server.fleet import inventory
from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest
from server.registry.artifact_store import ArtifactStore
from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import device_client, sqlite_database, wait_until

pytestmark = [pytest.mark.rollouts, pytest.mark.integration]

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TARGET = "digits/3/int8/model.onnx"
FLEET_ROUTERS = [devices.router, deployments.router, ingest_routes.router]


@pytest.fixture
def settings(tmp_path: Path, mosquitto: MosquittoBroker) -> ServerSettings:
    settings = ServerSettings(home=tmp_path, broker_port=mosquitto.port, fleet="f1")
    settings.admin_token_file.write_text(TOKEN + "\n")
    return settings


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    with sqlite_database(tmp_path) as factory:
        now = datetime.now(UTC)
        with factory.begin() as session:
            for device_id in ("d1", "d2"):
                inventory.apply_status(
                    session, DeviceStatus(device_id=device_id, online=True, state="running"), now
                )
            model = Model(name="digits", task="digits")
            session.add_all([model, Artifact(sha256="a" * 64, size_bytes=1)])
            session.flush()
            version = ModelVersion(model_id=model.id, version=3, format="int8",
                                   artifact_sha256="a" * 64, size_bytes=1)
            session.add(version)
            session.flush()
            session.add(Release(model_version_id=version.id, target_path=TARGET, targets_version=1))
        yield factory


@pytest.fixture
def publisher(settings: ServerSettings) -> Iterator[CommandPublisher]:
    with CommandPublisher(settings) as publisher:
        assert publisher.wait_connected(5)
        yield publisher


def _client(settings: ServerSettings, db: sessionmaker, publisher: CommandPublisher,
            ingest: Ingest | None = None) -> TestClient:
    store = ArtifactStore(settings.home / "artifacts")
    app = create_app(settings, db, store, routers=FLEET_ROUTERS)
    app.state.publisher, app.state.ingest = publisher, ingest
    return TestClient(app)


def test_lists_and_gets_devices(settings: ServerSettings, db: sessionmaker,
                                publisher: CommandPublisher) -> None:
    http = _client(settings, db, publisher)

    devices = http.get("/api/devices", headers=ADMIN).json()
    one = http.get("/api/devices/d1", headers=ADMIN)
    missing = http.get("/api/devices/nope", headers=ADMIN)
    anonymous = http.get("/api/devices")

    assert [d["device_id"] for d in devices] == ["d1", "d2"]
    assert set(devices[0]) >= {"device_id", "online", "state", "model", "version", "release",
                               "reason", "telemetry_messages", "last_seen_at"}
    assert one.status_code == 200 and one.json()["online"] is True
    assert one.json()["last_seen_at"].endswith(("Z", "+00:00"))
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert anonymous.status_code == 401  # reads need a token too (viewer or above)


def test_ingest_stats(
    settings: ServerSettings, db: sessionmaker, publisher: CommandPublisher
) -> None:
    without = _client(settings, db, publisher).get("/api/ingest/stats", headers=ADMIN)
    ingest = Ingest(settings, db, client_id="stats-only")
    with_ingest = _client(settings, db, publisher, ingest).get("/api/ingest/stats", headers=ADMIN)

    assert without.status_code == 503
    assert with_ingest.status_code == 200
    assert {"received", "stored", "duplicates", "rejected"} <= set(with_ingest.json())
    assert with_ingest.json()["rejected"] == {}


def test_deployment_sends_an_update_command_to_each_device(
    settings: ServerSettings,
    db: sessionmaker,
    publisher: CommandPublisher,
    mosquitto: MosquittoBroker,
) -> None:
    http = _client(settings, db, publisher)
    received: queue.Queue = queue.Queue()

    with device_client(mosquitto.port, "watcher", subscribe="edgeops/f1/devices/+/cmd",
                       on_message=received.put):
        to_all = http.post(
            "/api/deployments", json={"target": TARGET, "devices": None}, headers=ADMIN
        )
        messages = [received.get(timeout=5) for _ in range(2)]
        to_one = http.post(
            "/api/deployments", json={"target": TARGET, "devices": ["d2"]}, headers=ADMIN
        )
        messages.append(received.get(timeout=5))

    assert to_all.status_code == 202, to_all.text
    assert to_all.json()["devices"] == ["d1", "d2"]
    assert to_one.json()["devices"] == ["d2"]
    commands = [decode(Command, m.payload) for m in messages]
    assert {c.command_id for c in commands[:2]} == {to_all.json()["command_id"]}
    assert all(c.kind == "update" and c.target == TARGET for c in commands)
    assert sorted(m.topic for m in messages[:2]) == [
        "edgeops/f1/devices/d1/cmd",
        "edgeops/f1/devices/d2/cmd",
    ]


@pytest.mark.parametrize(
    ("body", "status", "in_detail"),
    [
        ({"target": TARGET, "devices": ["d1", "ghost-1", "ghost-2"]}, 404, "ghost-1, ghost-2"),
        ({"target": "digits/9/int8/model.onnx"}, 404, "no release"),
        ({"target": "../../etc/passwd"}, 422, "target"),
        ({"target": TARGET, "devices": []}, 422, "devices"),
        ({"target": TARGET, "devices": ["bad id!"]}, 422, "invalid device ids"),
        ({"target": TARGET, "devices": "d1"}, 422, "devices"),
        ({"target": TARGET, "rollout": "yolo"}, 422, "rollout"),
        ({"devices": ["d1"]}, 422, "target"),
        ({"target": 42}, 422, "target"),
    ],
)
def test_bad_deployments_are_refused_with_a_message(
    settings: ServerSettings, db: sessionmaker, publisher: CommandPublisher,
    body: dict, status: int, in_detail: str,
) -> None:
    response = _client(settings, db, publisher).post("/api/deployments", json=body, headers=ADMIN)

    assert response.status_code == status, response.text
    assert in_detail in response.text


def test_malformed_json_is_a_4xx(settings: ServerSettings, db: sessionmaker,
                                 publisher: CommandPublisher) -> None:
    response = _client(settings, db, publisher).post(
        "/api/deployments",
        content=b"{not json",
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_deployments_need_the_admin_token(settings: ServerSettings, db: sessionmaker,
                                          publisher: CommandPublisher) -> None:
    http = _client(settings, db, publisher)
    anonymous = http.post("/api/deployments", json={"target": TARGET})
    wrong = http.post(
        "/api/deployments", json={"target": TARGET}, headers={"Authorization": "Bearer x"}
    )
    assert (anonymous.status_code, wrong.status_code) == (401, 401)


def test_broker_down_is_a_503(settings: ServerSettings, db: sessionmaker,
                              publisher: CommandPublisher, mosquitto: MosquittoBroker) -> None:
    http = _client(settings, db, publisher)
    mosquitto.kill()
    wait_until(lambda: not publisher.wait_connected(0), what="publisher noticed the broker is gone")

    response = http.post("/api/deployments", json={"target": TARGET}, headers=ADMIN)

    assert response.status_code == 503 and "not connected" in response.json()["detail"]


def test_fleet_lifespan_starts_and_stops_mqtt_with_the_app(
    settings: ServerSettings, db: sessionmaker
) -> None:
    publisher = CommandPublisher(settings)
    ingest = Ingest(settings, db, client_id="lifespan-ingest")
    store = ArtifactStore(settings.home / "artifacts")
    app = create_app(settings, db, store, routers=FLEET_ROUTERS,
                     lifespan=fleet_lifespan(publisher, ingest))
    app.state.publisher, app.state.ingest = publisher, ingest

    with TestClient(app) as http:
        assert publisher.wait_connected(5) and ingest.wait_ready(5)
        assert http.get("/api/ingest/stats", headers=ADMIN).json()["connected"] is True

    assert not publisher.wait_connected(0) and not ingest.wait_ready(0)


def test_training_runs_are_served_with_utc_timestamps(
    settings: ServerSettings, db: sessionmaker
) -> None:
    started = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    with db.begin() as session:
        session.add(TrainingRun(task="digits", kind="federated", status="succeeded",
                                config={"rounds": 2}, metrics={"accuracy": 0.9},
                                weights_sha256="b" * 64, started_at=started))
    app = create_app(settings, db, ArtifactStore(settings.home / "artifacts"),
                     routers=[training_router])
    http = TestClient(app)

    runs = http.get("/api/training-runs", headers=ADMIN)
    one = http.get(f"/api/training-runs/{runs.json()[0]['id']}", headers=ADMIN)
    missing = http.get("/api/training-runs/999", headers=ADMIN)
    bad_id = http.get("/api/training-runs/zero", headers=ADMIN)

    assert runs.status_code == 200 and len(runs.json()) == 1
    assert one.json()["metrics"] == {"accuracy": 0.9} and one.json()["finished_at"] is None
    # SQLite hands back naive datetimes; the API says they are UTC.
    assert datetime.fromisoformat(one.json()["started_at"]) == started
    assert missing.status_code == 404 and "999" in missing.json()["detail"]
    assert bad_id.status_code == 422
