"""Lineage on a seeded database: a device's status history (DeviceEvent rows at chosen times),
two published releases (v1 manual, v2 from a pipeline run), the rollouts that sent them and
the rollback; the answers at each moment, a release's devices, the API, CLI text and console."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from edgeops.errors import ConfigError, NotFoundError
from server.app.build import build_app
from server.app.home import init_home
from server.cli.lineage import app, render_device, render_release
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import (
    Device,
    DeviceEvent,
    ModelVersion,
    PipelineRun,
    Rollout,
    RolloutDevice,
    TrainingRun,
)
from server.governance.lineage import (
    Interval,
    StatusPoint,
    device_lineage,
    parse_time,
    release_intervals,
    release_lineage,
)
from server.pipeline.publishing import PublishedRelease, publish_package
from server.trust.repository import TufRepository
from tests.server.console.support import console_login
from tests.server.helpers import make_package

pytestmark = [pytest.mark.governance]

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# The pure core ---------------------------------------------------------------------------

A, B = "m/1/model.int8.onnx", "m/2/model.int8.onnx"


def point(minutes: float, release: str | None, online: bool = True) -> StatusPoint:
    return StatusPoint(at(minutes), release, online, "idle")


@pytest.mark.parametrize(
    ("points", "current", "expected"),
    [
        ([], None, []),
        ([point(0, A)], None, [Interval(A, at(0), None)]),
        # presence changes alone keep the interval open
        ([point(0, A), point(1, A, online=False), point(2, A)], None, [Interval(A, at(0), None)]),
        ([point(0, None), point(1, A), point(5, B), point(9, A)], None,
         [Interval(None, at(0), at(1)), Interval(A, at(1), at(5)), Interval(B, at(5), at(9)),
          Interval(A, at(9), None)]),
        # out of order rows are sorted by time
        ([point(5, B), point(1, A)], None, [Interval(A, at(1), at(5)), Interval(B, at(5), None)]),
        # the device row adds a change the runner has not recorded yet ...
        ([point(1, A)], point(3, B), [Interval(A, at(1), at(3)), Interval(B, at(3), None)]),
        # ... and adds nothing when it says what the last point says
        ([point(1, A)], point(3, A), [Interval(A, at(1), None)]),
        # no history at all: the device row is the only point
        ([], point(3, B), [Interval(B, at(3), None)]),
    ],
)
def test_release_intervals(points: list[StatusPoint], current: StatusPoint | None,
                           expected: list[Interval]) -> None:
    assert release_intervals(points, current) == expected


def test_parse_time_accepts_iso_with_a_timezone_and_now() -> None:
    assert parse_time("2026-11-30T13:00:00+01:00") == T0
    assert parse_time("2026-11-30T12:00:00Z") == T0
    assert parse_time("now", now=T0) == T0
    assert parse_time(" NOW ").tzinfo is not None


@pytest.mark.parametrize("text", ["2026-11-30T12:00:00", "yesterday", "", "12:00"])
def test_parse_time_refuses_naive_or_malformed_times(text: str) -> None:
    with pytest.raises(ConfigError, match="timezone|ISO 8601"):
        parse_time(text)


# A seeded fleet ---------------------------------------------------------------------------


@dataclass
class World:
    settings: ServerSettings
    factory: sessionmaker
    v1: PublishedRelease
    v2: PublishedRelease


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """v1 published by hand and rolled out at minute 2; v2 from pipeline run (training run with
    3 rounds on two cohorts) rolled out at minute 10 and rolled back at minute 20.

    Device `dev-1` first seen at minute 0, its status history starts at minute 1 (no model),
    v1 from minute 3, v2 from minute 11, v1 again from minute 21 (and offline at minute 25).
    `dev-2` took v1 only, from minute 4."""
    tmp = tmp_path_factory.mktemp("lineage")
    settings = ServerSettings(home=tmp / "home", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    v1 = publish_package(settings, factory, make_package(tmp / "p1", seed=1), "int8")
    v2 = publish_package(settings, factory, make_package(tmp / "p2", seed=2), "int8")
    with factory.begin() as session:
        training = TrainingRun(
            task="edgeops.tasks.digits:digits", kind="federated", status="succeeded",
            config={"secagg_resolved": True, "privacy": {"dp": False}},
            metrics={"rounds": [{"round": i} for i in range(1, 4)]},
            data_fingerprint="f" * 64, code_version="abc1234", started_at=at(6),
            finished_at=at(8))
        session.add(training)
        session.flush()
        session.execute(update(ModelVersion).where(ModelVersion.version == v2.version)
                        .values(training_run_id=training.id))
        session.add(PipelineRun(
            model="digits", status="rolled_back", policy={"approval": {"mode": "automatic"}},
            trigger={"kind": "event", "event": "drift", "cohort": "digits|default",
                     "evidence": {"max_psi": 0.4}},
            results={"participants": {"devices": 2, "cohorts": {"default": 2}},
                     "gates": [{"name": "accuracy", "passed": True}]},
            training_run_id=training.id, candidate_version=v2.version,
            candidate_target=v2.target_path, created_by="monitor", created_at=at(5).timestamp(),
            updated_at=at(20).timestamp(), state_entered_at=at(20).timestamp()))
        first = Rollout(target=v1.target_path, policy={}, status="completed",
                        created_by="alice", created_at=at(2))
        second = Rollout(target=v2.target_path, policy={}, status="aborted",
                         created_by="pipeline", created_at=at(10), reason="canary worse")
        session.add_all([first, second])
        session.flush()
        session.add_all([
            RolloutDevice(rollout_id=first.id, device_id="dev-1", position=0, wave=0,
                          phase="succeeded", sent_at=at(2).timestamp(),
                          resolved_at=at(3).timestamp()),
            RolloutDevice(rollout_id=first.id, device_id="dev-2", position=1, wave=1,
                          phase="succeeded", sent_at=at(3.5).timestamp(),
                          resolved_at=at(4).timestamp()),
            RolloutDevice(rollout_id=second.id, device_id="dev-1", position=0, wave=0,
                          phase="rolled_back", sent_at=at(10).timestamp(),
                          resolved_at=at(11).timestamp(), rollback_sent_at=at(20).timestamp()),
            Device(device_id="dev-1", online=False, state="offline", release=v1.target_path,
                   first_seen_at=at(0), last_status_at=at(25)),
            Device(device_id="dev-2", online=True, state="idle", release=v1.target_path,
                   first_seen_at=at(0), last_status_at=at(4)),
        ])
        history = [(1, None, True), (2.5, None, True), (3, v1.target_path, True),
                   (10.5, v1.target_path, True), (11, v2.target_path, True),
                   (21, v1.target_path, True), (25, v1.target_path, False)]
        session.add_all([
            DeviceEvent(device_id="dev-1", at=at(m), online=online, state="idle", release=r)
            for m, r, online in history
        ])
        session.add(DeviceEvent(device_id="dev-2", at=at(4), online=True, state="idle",
                                release=v1.target_path))
    yield World(settings, factory, v1, v2)
    close_database(factory)


def lineage_at(world: World, device_id: str, minutes: float) -> dict:
    with world.factory() as session:
        return device_lineage(session, device_id, at(minutes), world.settings.tuf_dir)


@pytest.mark.parametrize(
    ("minutes", "release", "since", "until"),
    [(1.5, None, 1, 3), (3, "v1", 3, 11), (10.9, "v1", 3, 11), (11, "v2", 11, 21),
     (15, "v2", 11, 21), (21, "v1", 21, None), (60, "v1", 21, None)],
)
def test_device_lineage_names_the_release_and_its_interval(
    world: World, minutes: float, release: str | None, since: float, until: float | None
) -> None:
    answer = lineage_at(world, "dev-1", minutes)
    targets = {"v1": world.v1.target_path, "v2": world.v2.target_path, None: None}
    assert answer["status"] == "ran"
    assert answer["release"] == targets[release]
    assert answer["since"] == at(since).isoformat()
    assert answer["until"] == (None if until is None else at(until).isoformat())


def test_before_first_seen_and_before_the_history_starts(world: World) -> None:
    early = lineage_at(world, "dev-1", -5)
    assert early["status"] == "not_seen_yet" and early["release"] is None
    assert at(0).isoformat() in early["detail"]
    gap = lineage_at(world, "dev-1", 0.5)
    assert gap["status"] == "unknown"
    assert at(1).isoformat() in gap["detail"]


def test_unknown_device_is_not_found(world: World) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        lineage_at(world, "nope", 1)


def test_the_chain_of_a_pipeline_release(world: World) -> None:
    answer = lineage_at(world, "dev-1", 15)
    chain = answer["lineage"]
    assert answer["arrived_by"]["how"] == "update"
    assert answer["arrived_by"]["wave"] == 1 and answer["arrived_by"]["created_by"] == "pipeline"
    assert chain["model_version"]["version"] == world.v2.version
    assert chain["published_by"]["kind"] == "pipeline"
    assert chain["published_by"]["started_by"] == "monitor"
    training = chain["training"]
    assert (training["rounds"], training["secure_aggregation"]) == (3, True)
    assert training["data_fingerprint"] == "f" * 64 and training["code_version"] == "abc1234"
    assert training["participants"]["cohorts"] == {"default": 2}
    assert chain["approval"] == {"pipeline": "automatic (policy)",
                                 "rollouts_created_by": ["pipeline"]}
    assert chain["trigger"]["evidence"] == {"max_psi": 0.4}
    assert [r["status"] for r in chain["rollouts"]] == ["aborted"]


def test_signing_names_the_targets_keys_and_version(world: World) -> None:
    signing = lineage_at(world, "dev-1", 15)["lineage"]["signing"]
    repository = TufRepository(world.settings.tuf_dir)
    targets_keys = {k for k, (path, _s) in repository.local_signers().items()
                    if path.name.startswith("targets")}
    assert signing["targets_version"] == world.v2.targets_version
    assert set(signing["signed_by_keyids"]) == targets_keys
    assert signing["keys_still_trusted"] == signing["signed_by_keyids"]
    assert signing["target_sha256"] == world.v2.artifact_sha256


def test_after_the_rollback_v1_came_back_by_rollback_and_was_published_manually(
    world: World,
) -> None:
    answer = lineage_at(world, "dev-1", 30)
    assert answer["online"] is False  # offline since minute 25, still with v1 installed
    assert answer["arrived_by"]["how"] == "rollback"
    assert answer["arrived_by"]["target"] == world.v2.target_path
    chain = answer["lineage"]
    assert chain["published_by"] == {"kind": "manual", "pipeline_run": None}
    assert chain["training"] is None and chain["trigger"] == {"kind": "manual"}
    assert chain["approval"]["rollouts_created_by"] == ["alice"]
    assert [h["release"] for h in answer["history"]] == [
        None, world.v1.target_path, world.v2.target_path, world.v1.target_path]


def test_release_lineage_lists_the_devices_and_when(world: World) -> None:
    with world.factory() as session:
        v1 = release_lineage(session, world.v1.target_path)
        v2 = release_lineage(session, f"digits:{world.v2.version}")
    assert v1["devices"] == [
        {"device_id": "dev-1", "intervals": [
            {"release": world.v1.target_path, "since": at(3).isoformat(),
             "until": at(11).isoformat()},
            {"release": world.v1.target_path, "since": at(21).isoformat(), "until": None}]},
        {"device_id": "dev-2", "intervals": [
            {"release": world.v1.target_path, "since": at(4).isoformat(), "until": None}]},
    ]
    assert v2["target"] == world.v2.target_path
    assert [d["device_id"] for d in v2["devices"]] == ["dev-1"]
    assert "dev-1: " + at(11).isoformat() in render_release(v2)


@pytest.mark.parametrize("name", ["digits:99", "other/1/model.int8.onnx", "digits"])
def test_release_lineage_of_an_unknown_release_is_not_found(world: World, name: str) -> None:
    with world.factory() as session, pytest.raises(NotFoundError):
        release_lineage(session, name)


def test_render_device_says_what_ran_and_why(world: World) -> None:
    text = render_device(lineage_at(world, "dev-1", 15))
    assert f"ran {world.v2.target_path} since {at(11).isoformat()}" in text
    assert "published by pipeline run" in text and "3 rounds, SecAgg+ yes" in text
    assert "installed by update of rollout" in text
    assert "approval: automatic (policy); rollouts started by pipeline" in text
    assert "not seen yet" in render_device(lineage_at(world, "dev-1", -1))


def test_api_and_console(world: World) -> None:
    token = world.settings.admin_token_file.read_text().strip()
    with TestClient(build_app(world.settings, with_fleet=False)) as client:
        auth = {"Authorization": f"Bearer {token}"}
        ok = client.get("/api/lineage/devices/dev-1", params={"at": at(15).isoformat()},
                        headers=auth)
        assert ok.status_code == 200, ok.text
        assert ok.json()["release"] == world.v2.target_path
        bad = client.get("/api/lineage/devices/dev-1", params={"at": "tuesday"}, headers=auth)
        assert bad.status_code == 400 and "ISO 8601" in bad.json()["detail"]
        assert client.get("/api/lineage/devices/ghost", headers=auth).status_code == 404
        assert client.get("/api/lineage/devices/dev-1").status_code == 401
        release = client.get(f"/api/lineage/releases/{world.v1.target_path}", headers=auth)
        assert [d["device_id"] for d in release.json()["devices"]] == ["dev-1", "dev-2"]

        console_login(client, token)
        device_page = client.get("/console/devices/dev-1")
        assert 'href="/console/lineage/devices/dev-1"' in device_page.text
        page = client.get("/console/lineage/devices/dev-1", params={"at": at(15).isoformat()})
        assert page.status_code == 200
        assert world.v2.target_path in page.text and "abc1234" in page.text
        assert client.get("/console/lineage/devices/dev-1",
                          params={"at": "x"}).status_code == 400
        release_page = client.get(f"/console/lineage/releases/{world.v1.target_path}")
        assert release_page.status_code == 200 and "dev-2" in release_page.text


def test_the_cli_refuses_a_bad_time_before_any_request() -> None:
    result = CliRunner().invoke(app, ["device", "dev-1", "--at", "soon",
                                      "--server", "http://127.0.0.1:9"],
                                env={"EDGEOPS_TOKEN": "t"})
    assert isinstance(result.exception, ConfigError)
    assert "ISO 8601" in str(result.exception)
