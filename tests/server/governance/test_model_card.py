"""Model cards (issue 14 item 1): one for a manual release and one for a pipeline release,
both valid against schemas/model_card.schema.json; the signed part is inside the TUF
targets metadata and equals the server's copy; the deployment part follows the rollout,
the pipeline run and the audit log; the API and `edgeops model card` serve it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from edgeops.schemas import MODEL_CARD_MAX_BYTES, ReleaseInfo
from server.config.settings import ServerSettings
from server.db.tables import AuditEntry, Device, DeviceLabel, RolloutDevice, TrainingRun
from server.governance.model_card import (
    deployment_record,
    full_card,
    resolve_release,
    signed_part,
    validate_card,
)
from server.pipeline import store
from server.pipeline.gates import CandidateMetrics, check_gates
from server.pipeline.policy import default_policy
from server.pipeline.publishing import PublishedRelease, publish_package
from server.rollouts import store as rollout_store
from server.rollouts.controller import RolloutPolicy
from server.trust.repository import TufRepository
from tests.server.helpers import make_package

pytestmark = [pytest.mark.governance]

T0 = 1_790_000_000.0
FINGERPRINT = "f" * 64
COHORTS = {"east": 3, "west": 3}
TRIGGER = {"kind": "event", "event": "drift_detected", "event_id": 7,
           "cohort": "digits/1/model.int8.onnx@east", "group": "east",
           "release": "digits/1/model.int8.onnx",
           "evidence": {"features": [27, 28, 35], "drifted_share": 0.047, "cusum": 3.2}}
SECAGG = {"protocol": "SecAgg+ (flwr SecAggPlusWorkflow + secaggplus_mod)", "num_shares": 3,
          "reconstruction_threshold": 2, "clipping_range": 8.0}


def _weight_set(name: str, accuracy: float, east: float, west: float) -> dict[str, Any]:
    return {"name": name, "examples": 480, "accuracy": accuracy,
            "class_recall": {str(c): round(accuracy - 0.01 * (c % 3), 4) for c in range(10)},
            "class_examples": {str(c): 48 for c in range(10)},
            "cohort_accuracy": {"east": east, "west": west},
            "cohort_examples": {"east": 240, "west": 240}, "replied": 6, "failed": 0}


FLEET = {"schema": 1, "cohorts": ["east", "west"], "num_classes": 10, "weight_sets": {
    "candidate": _weight_set("candidate", 0.95, 0.94, 0.96),
    "champion": _weight_set("champion", 0.91, 0.86, 0.96)}}


def _publish(settings: ServerSettings, factory: sessionmaker, directory: Path,
             **report: Any) -> PublishedRelease:
    return publish_package(settings, factory, make_package(directory, task="digits", **report))


def _signed_custom(settings: ServerSettings, target: str) -> dict[str, Any]:
    [entry] = [t for t in TufRepository(settings.tuf_dir).targets() if t.path == target]
    return entry.custom


@dataclass
class PipelineRelease:
    run_id: int
    training_run_id: int
    release: PublishedRelease
    gates: list[dict[str, Any]]


def seed_pipeline_release(settings: ServerSettings, factory: sessionmaker,
                          tmp: Path) -> PipelineRelease:
    """v1 published by hand (the champion), then a pipeline run seeded the way the runner
    writes it up to `packaging`, its training run recorded the way the training job does,
    and v2 published from a package naming that training run."""
    _publish(settings, factory, tmp / "v1")
    policy = default_policy()
    with factory.begin() as session:
        run = store.create_run(session, "digits", policy.to_json(), TRIGGER, "pipeline", T0, 1)
        store.update_results(run, participants={"devices": 6, "cohorts": COHORTS,
                                                "scope": "fleet"})
        store.move(session, run, "training", "training on 6 devices", T0 + 1,
                   training_attempts=1)
        trained = TrainingRun(
            task="digits", kind="federated", status="succeeded", data_fingerprint=FINGERPRINT,
            code_version="0.1.0+gabc", weights_sha256="b" * 64,
            started_at=datetime.fromtimestamp(T0 + 1, UTC),
            finished_at=datetime.fromtimestamp(T0 + 30, UTC),
            config={"task": "digits", "num_clients": 6, "num_rounds": 3, "local_epochs": 2,
                    "learning_rate": 0.001, "strategy": {"name": "fedavg"}, "secagg": SECAGG,
                    "dp": None, "initial_weights": "/artifacts/champion.pt",
                    "secagg_resolved": SECAGG, "privacy": None, "weights_bytes": 680000,
                    "pipeline_run_id": run.id, "attempt": 1, "feedback_examples": 960},
            metrics={"heldout_accuracy": 0.962, "rounds_aggregated": 3,
                     "drift_reference_examples": 1200, "fleet_evaluation": FLEET},
        )
        session.add(trained)
        session.flush()
        store.move(session, run, "evaluating", "trained", T0 + 31, training_run_id=trained.id)
        candidate = CandidateMetrics(heldout_accuracy=0.962, fleet_accuracy=0.95,
                                     class_recall={c: 0.93 for c in range(10)},
                                     cohort_accuracy={"east": 0.94, "west": 0.96},
                                     fleet_examples=480)
        champion = CandidateMetrics(heldout_accuracy=0.958, fleet_accuracy=0.91)
        verdict = check_gates(policy.gates, candidate, champion, stage="evaluation")
        gates = [r.to_json() for r in verdict.results]
        store.update_results(run, gates=gates, evaluation={
            "heldout": {"candidate": {"accuracy": 0.962, "examples": 450,
                                      "class_recall": {str(c): 0.93 for c in range(10)}},
                        "champion": {"accuracy": 0.958, "examples": 450, "class_recall": {}}},
            "fleet": FLEET})
        store.move(session, run, "gated", "passed", T0 + 32)
        store.move(session, run, "packaging", "packaging fp32 -> int8", T0 + 33)
        run_id, training_run_id = run.id, trained.id
    release = _publish(
        settings, factory, tmp / "v2",
        lineage={"data_fingerprint": FINGERPRINT, "code_version": "0.1.0+gabc",
                 "training_run_id": training_run_id, "parent_version": 1,
                 "checkpoint_sha256": "b" * 64},
        accuracy={"fp32": 0.97, "int8": 0.965}, agreement=0.99,
        p50_latency_us={"fp32": 41.5, "int8": 23.25}, sizes_bytes={"fp32": 2742, "int8": 2742},
        quantization={"method": "static", "accuracy_budget_pp": 1.0},
    )
    return PipelineRelease(run_id, training_run_id, release, gates)


@pytest.fixture
def pipeline_release(server_settings: ServerSettings, session_factory: sessionmaker,
                     tmp_path: Path) -> PipelineRelease:
    return seed_pipeline_release(server_settings, session_factory, tmp_path)


def test_a_manual_release_gets_a_valid_card_that_says_manual_publish(
    server_settings: ServerSettings, session_factory: sessionmaker, tmp_path: Path
) -> None:
    released = _publish(server_settings, session_factory, tmp_path / "pkg")

    with session_factory() as session:
        card, signed = signed_part(session, "digits", 1)
        full = full_card(session, "digits", 1)

    assert signed is True
    validate_card(card)
    validate_card(full)
    assert card["model_details"]["version"]["name"] == "1"
    assert card["model_details"]["version"]["diff"] == "manual publish"
    assert card["edgeops"]["origin"] == {"kind": "manual", "summary": "manual publish",
                                         "pipeline_run_id": None, "started_by": None}
    assert card["edgeops"]["trigger"] == {"kind": "manual publish"}
    assert card["edgeops"]["gates"] == [] and card["edgeops"]["policy"] is None
    assert card["edgeops"]["training"] is None
    assert card["edgeops"]["release"]["artifact_sha256"] == released.artifact_sha256
    assert card["edgeops"]["data"]["fingerprint"] == "a" * 64
    assert card["quantitative_analysis"]["performance_metrics"] == [
        {"type": "accuracy", "value": 0.96, "slice": "package report"}]
    assert full["deployment"]["verdict"] is None and full["deployment"]["rollouts"] == []


def test_the_signed_part_is_in_the_targets_metadata_and_equals_the_servers_copy(
    server_settings: ServerSettings, session_factory: sessionmaker,
    pipeline_release: PipelineRelease,
) -> None:
    target = pipeline_release.release.target_path
    custom = _signed_custom(server_settings, target)

    signed = ReleaseInfo.from_custom(custom).model_card
    with session_factory() as session:
        server_copy, was_signed = signed_part(session, "digits", 2)

    assert isinstance(custom["edgeops"]["model_card"], str)  # one JSON text: floats exact
    assert was_signed and signed == server_copy
    assert signed is not None and signed["edgeops"]["release"]["target"] == target
    assert len(custom["edgeops"]["model_card"].encode()) <= MODEL_CARD_MAX_BYTES


def test_a_pipeline_release_card_has_trigger_data_recipe_gates_metrics_and_policy(
    session_factory: sessionmaker, pipeline_release: PipelineRelease
) -> None:
    with session_factory() as session:
        card, _ = signed_part(session, "digits", 2)

    validate_card(card)
    ext = card["edgeops"]
    assert ext["origin"] == {"kind": "pipeline", "summary": f"pipeline run {pipeline_release.run_id}",
                             "pipeline_run_id": pipeline_release.run_id, "started_by": "pipeline"}
    assert card["model_details"]["version"]["diff"] == (
        f"retrained from v1 by pipeline run {pipeline_release.run_id} "
        "(drift_detected on digits/1/model.int8.onnx@east)")
    assert ext["trigger"]["evidence"] == TRIGGER["evidence"]
    assert ext["data"] == {"fingerprint": FINGERPRINT, "devices": 6, "cohorts": COHORTS,
                           "scope": "fleet", "feedback_examples": 960,
                           "drift_reference_examples": 1200}
    training = ext["training"]
    assert (training["training_run_id"], training["rounds"], training["strategy"],
            training["warm_start_from_version"]) == (pipeline_release.training_run_id, 3,
                                                      "fedavg", 1)
    assert training["secagg"] == SECAGG and training["dp"] is None
    evaluation = [g["name"] for g in pipeline_release.gates]
    assert [g["name"] for g in ext["gates"]] == [*evaluation, "int8_drop_pp_max",
                                                  "int8_agreement_min"]
    change = next(g for g in ext["gates"] if g["name"] == "heldout_change_min")
    assert (change["champion_value"], change["threshold"], change["stage"]) == (0.958, -0.01,
                                                                               "evaluation")
    drop = next(g for g in ext["gates"] if g["name"] == "int8_drop_pp_max")
    assert drop["value"] == pytest.approx(0.5) and drop["passed"] and drop["stage"] == "packaging"
    assert ext["champion_version"] == 1
    assert ext["metrics"]["fleet"]["candidate"]["cohort_accuracy"] == {"east": 0.94, "west": 0.96}
    assert ext["int8"]["p50_latency_us"] == {"fp32": 41.5, "int8": 23.25}
    assert ext["int8"]["accuracy_drop_pp"] == pytest.approx(0.5)
    assert ext["policy"] == default_policy().to_json()
    rows = card["quantitative_analysis"]["performance_metrics"]
    slices = {row["slice"]: row for row in rows}
    assert slices["fleet evaluation, cohort east"]["value"] == 0.94
    assert slices["fleet evaluation, class 1"] == {
        "type": "recall", "value": 0.94, "slice": "fleet evaluation, class 1",
        "threshold": 0.7, "passed": True}
    assert slices["held-out split, int8 vs fp32 top-1"]["threshold"] == 0.98
    assert card["model_details"]["overview"].startswith("scikit-learn handwritten digits")


def test_the_deployment_part_follows_rollout_approval_verdict_and_audit(
    session_factory: sessionmaker, pipeline_release: PipelineRelease
) -> None:
    target = pipeline_release.release.target_path
    with session_factory.begin() as session:
        for i, group in enumerate(("east", "east", "west")):
            session.add(Device(device_id=f"d{i}", online=True, release=target if i < 2 else None))
            session.add(DeviceLabel(device_id=f"d{i}", group_name=group))
        run = store.get_run(session, pipeline_release.run_id)
        store.move(session, run, "signed", "published and signed v2", T0 + 40,
                   candidate_version=2, candidate_target=target)
        store.move(session, run, "awaiting_approval", "waiting", T0 + 41)
    with session_factory.begin() as session:
        store.approve(session, pipeline_release.run_id, "alice", T0 + 42)
        run = store.get_run(session, pipeline_release.run_id)
        store.move(session, run, "canary", "approved by alice", T0 + 43,
                   {"approved_by": "alice"})
        rollout = rollout_store.create_rollout(
            session, rollout_store.RolloutSpec(target=target, policy=RolloutPolicy(
                waves_pct=(50.0, 100.0))), "pipeline", T0 + 44)
        session.flush()
        for row in session.query(RolloutDevice).filter_by(rollout_id=rollout.id):
            row.phase = "succeeded" if row.device_id in ("d0", "d1") else "pending"
        session.add(AuditEntry(actor="alice", role="operator", action="pipeline.approve",
                               resource="pipeline_run", outcome="ok",
                               target=f"pipeline run {pipeline_release.run_id}",
                               reason="canary looks fine"))
        session.add(AuditEntry(actor="bob", role="operator", action="POST",
                               resource="/api/devices/x", outcome="ok", target="device x"))
        run.results = {**run.results, "canary": {"checks": [
            {"at": T0 + 200, "wave": 1, "verdict": "pass", "reason": "east 0.95 vs 0.94"}]}}
        rollout_id = rollout.id

    with session_factory() as session:
        deployment = deployment_record(session, "digits", 2)

    assert deployment["verdict"] == "in progress"
    assert deployment["approvals"] == [{"at": T0 + 42, "by": "alice", "how": "a person's approval"}]
    assert [r["id"] for r in deployment["rollouts"]] == [rollout_id]
    assert deployment["rollouts"][0]["devices"] == 3 and deployment["rollouts"][0]["done"] == 2
    assert deployment["devices_reached"] == 2 and deployment["devices_running"] == 2
    assert [c["verdict"] for c in deployment["canary_checks"]] == ["pass"]
    audit = [(a["actor"], a["reason"]) for a in deployment["audit"]]
    assert ("alice", "canary looks fine") in audit  # beside the run's moves, by "pipeline"
    assert {"alice", "pipeline"} <= {actor for actor, _ in audit}  # and the publisher

    with session_factory.begin() as session:
        store.move(session, store.get_run(session, pipeline_release.run_id), "promoted",
                   "promoted v2", T0 + 300)
    with session_factory() as session:
        full = full_card(session, "digits", 2)
    validate_card(full)
    assert full["deployment"]["verdict"] == "promoted"
    assert [t["status"] for t in full["deployment"]["timeline"]] == [
        "signed", "awaiting_approval", "awaiting_approval", "canary", "promoted"]


def test_the_card_is_compacted_under_its_cap_and_an_oversized_one_is_refused(
    server_settings: ServerSettings, session_factory: sessionmaker, pipeline_release: PipelineRelease
) -> None:
    with session_factory() as session:
        card, _ = signed_part(session, "digits", 2)
    oversized = {**card, "edgeops": {**card["edgeops"], "trigger": {
        "kind": "event", "evidence": {"blob": "x" * MODEL_CARD_MAX_BYTES}}}}
    info = ReleaseInfo.from_custom(_signed_custom(server_settings,
                                                  pipeline_release.release.target_path))

    with pytest.raises(ValueError, match="model_card is .* bytes as JSON, more than 16384"):
        ReleaseInfo.model_validate({**info.model_dump(by_alias=True), "model_card": oversized})
    assert len(json.dumps(card, separators=(",", ":")).encode()) <= MODEL_CARD_MAX_BYTES
    assert card["edgeops"]["limits"] == {"max_bytes": MODEL_CARD_MAX_BYTES, "omitted": []}


def test_a_card_that_breaks_the_schema_is_refused_naming_the_field(
    session_factory: sessionmaker, pipeline_release: PipelineRelease
) -> None:
    with session_factory() as session:
        card, _ = signed_part(session, "digits", 2)
    broken = {**card, "edgeops": {**card["edgeops"], "release": {
        **card["edgeops"]["release"], "artifact_sha256": "not-a-hash"}}}

    with pytest.raises(ConfigError, match="model card field edgeops/release/artifact_sha256"):
        validate_card(broken)


def test_a_release_is_found_by_target_path_or_model_and_version(
    session_factory: sessionmaker, pipeline_release: PipelineRelease
) -> None:
    from edgeops.errors import NotFoundError

    with session_factory() as session:
        assert resolve_release(session, "digits/2/model.int8.onnx") == ("digits", 2)
        assert resolve_release(session, "digits", 1) == ("digits", 1)
        with pytest.raises(NotFoundError, match="no release has the target path"):
            resolve_release(session, "digits/9/model.int8.onnx")
        with pytest.raises(NotFoundError, match="has no release of version 9"):
            resolve_release(session, "digits", 9)


@pytest.fixture
def api(server_settings: ServerSettings, session_factory: sessionmaker,
        pipeline_release: PipelineRelease) -> Iterator[TestClient]:
    from server.app.build import build_app

    token = server_settings.admin_token_file.read_text().strip()
    with TestClient(build_app(server_settings, with_fleet=False)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_the_api_serves_the_full_card_by_version_and_by_target(
    api: TestClient, session_factory: sessionmaker
) -> None:
    by_version = api.get("/api/models/digits/versions/2/card")
    by_target = api.get("/api/releases/card", params={"target": "digits/2/model.int8.onnx"})
    missing = api.get("/api/models/digits/versions/9/card")
    anonymous = api.get("/api/models/digits/versions/2/card", headers={"Authorization": ""})

    assert by_version.status_code == 200 and by_target.status_code == 200
    with session_factory() as session:
        signed, _ = signed_part(session, "digits", 2)
    body = by_version.json()
    assert {k: v for k, v in body.items() if k not in ("signed", "deployment")} == signed
    assert body["signed"] is True and body["deployment"]["target"] == "digits/2/model.int8.onnx"
    assert by_target.json()["edgeops"] == body["edgeops"]
    assert missing.status_code == 404 and "no release of version 9" in missing.json()["detail"]
    assert anonymous.status_code == 401


def test_the_cli_text_names_release_gates_metrics_and_deployment(
    api: TestClient, pipeline_release: PipelineRelease
) -> None:
    from server.cli.model_card import render_card

    text = render_card(api.get("/api/models/digits/versions/2/card").json())

    lines = text.splitlines()
    assert lines[0].startswith("model card  digits v2  (digits/2/model.int8.onnx, sha256 ")
    assert f"  training run {pipeline_release.training_run_id}: 3 rounds, fedavg, SecAgg+ on, " \
        "DP off, code 0.1.0+gabc" in lines
    assert any(line.startswith("    pass  int8_drop_pp_max") for line in lines)
    assert "  deployment: in progress; 0 rollouts; devices reached 0, running it now 0" in lines


def test_edgeops_model_card_without_a_version_or_target_path_says_what_to_give() -> None:
    from typer.testing import CliRunner

    from server.cli.model import app

    result = CliRunner().invoke(app, ["card", "digits"], env={"EDGEOPS_TOKEN": "t"})

    assert isinstance(result.exception, ConfigError)
    assert "give the version of 'digits'" in str(result.exception)


@pytest.mark.integration
def test_edgeops_model_card_prints_json_and_html(
    server_settings: ServerSettings, pipeline_release: PipelineRelease, tmp_path: Path
) -> None:
    from server.app.build import build_app
    from tests.cli_support import run_edgeops
    from tests.server.helpers import live_server

    token = server_settings.admin_token_file.read_text().strip()
    out = tmp_path / "card.html"
    with live_server(build_app(server_settings, with_fleet=False)) as url:
        token_file = tmp_path / "token"
        token_file.write_text(token)
        connection = ("--server", url, "--token-file", str(token_file))
        as_json = run_edgeops("model", "card", "digits/2/model.int8.onnx", "--json", *connection)
        as_html = run_edgeops("model", "card", "digits", "2", "--html", "--out", str(out),
                              *connection)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["edgeops"]["origin"]["pipeline_run_id"] == \
        pipeline_release.run_id
    assert as_html.returncode == 0, as_html.stderr
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "<link" not in page and "<script" not in page  # nothing fetched from elsewhere
    assert 'id="card-target">digits/2/model.int8.onnx' in page


def _wait(probe: Any, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.integration
def test_an_agent_that_installed_the_release_shows_the_same_card(
    tmp_path: Path, mosquitto: Any
) -> None:
    import httpx
    from typer.testing import CliRunner

    from agent import Agent, AgentConfig, init_agent_home
    from agent.cli import app as agent_app
    from agent.cli import local_status
    from server.app.build import build_app
    from server.app.home import init_home
    from server.db.engine import close_database, open_database
    from tests.server.helpers import live_server

    settings = ServerSettings(home=tmp_path / "server", broker_host=mosquitto.host,
                              broker_port=mosquitto.port, monitor_enabled=False)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    try:
        seeded = seed_pipeline_release(settings, factory, tmp_path)
        target = seeded.release.target_path
        auth = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
        with live_server(build_app(settings)) as url:
            config = AgentConfig(home=tmp_path / "device", device_id="device-1", server_url=url,
                                 broker_host=mosquitto.host, broker_port=mosquitto.port,
                                 telemetry_interval_s=0.5)
            init_agent_home(config.home, config,
                            (settings.tuf_dir / "metadata" / "1.root.json").read_bytes())
            with Agent(config), httpx.Client(base_url=url, timeout=10) as http:
                def device() -> dict[str, Any]:
                    response = http.get("/api/devices/device-1", headers=auth)
                    return response.json() if response.status_code == 200 else {}

                _wait(lambda: device().get("online"))
                deployed = http.post("/api/deployments", json={"target": target}, headers=auth)
                assert deployed.status_code == 202, deployed.text
                _wait(lambda: (local_status(config.home).get("active") or {}).get("target")
                      == target)
                server_card = http.get("/api/models/digits/versions/2/card", headers=auth).json()
        status = local_status(config.home)
        shown = CliRunner().invoke(agent_app, ["status", "--home", str(config.home)])
    finally:
        close_database(factory)

    device_card = status["active"]["model_card"]
    assert device_card == {k: v for k, v in server_card.items()
                           if k not in ("signed", "deployment")}
    assert device_card["edgeops"]["origin"]["pipeline_run_id"] == seeded.run_id
    validate_card(device_card)
    assert shown.exit_code == 0, shown.output
    assert (f"model card: retrained from v1 by pipeline run {seeded.run_id} (drift_detected on "
            "digits/1/model.int8.onnx@east); gates 8/8 passed; data " + FINGERPRINT) in shown.output  # the default policy sets 8
