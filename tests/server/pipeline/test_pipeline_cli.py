"""`edgeops pipeline`: the pure `render_run`, `policy check` as a user runs it, and the API
commands (run, list, status, watch, approve) against a live server with seeded runs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from edgeops.exit_codes import ExitCode
from server.cli.pipeline import app, render_run, render_timeline_entry
from server.pipeline import store
from tests.cli_support import run_edgeops
from tests.server.api.test_pipeline_api import (
    DEFAULT_POLICY,
    T0,
    PipelineWorld,
    path_to,
    pipeline_world,
    seed_run,
)
from tests.server.helpers import live_server

pytestmark = [pytest.mark.pipeline]

RUN = {
    "id": 7, "model": "digits", "status": "canary", "reason": None,
    "trigger": {"kind": "event", "event": "drift_detected", "cohort": "digits/3@lab"},
    "champion_version": 3, "candidate_version": 4, "candidate_target": "digits/4/model.int8.onnx",
    "training_run_id": 12, "rollout_id": 5, "approved_by": "alice",
    "results": {
        "gates": [{"name": "heldout_accuracy_min", "value": 0.9612, "threshold": 0.9, "passed": True},
                  {"name": "cohort_gap_max", "value": 0.14, "threshold": 0.1, "passed": False}],
        "canary": {"checks": [{"at": T0 + 60, "verdict": "pass", "reason": "gap 0.01 <= 0.05"}]},
    },
    "timeline": [{"at": T0, "status": "triggered", "message": "triggered by drift_detected",
                  "detail": {}},
                 {"at": T0 + 3725, "status": "training", "message": "5 rounds", "detail": {}}],
}


def test_render_run_shows_versions_gates_canary_checks_and_timeline() -> None:
    lines = render_run(RUN).splitlines()

    assert lines[0] == "pipeline run 7  digits  [canary]"
    assert lines[1] == ("  trigger drift_detected on digits/3@lab; champion v3; candidate v4 "
                        "(digits/4/model.int8.onnx)")
    assert lines[2] == "  training run 12; rollout 5; approved by alice"
    assert "    pass  heldout_accuracy_min     0.9612  threshold 0.9" in lines
    assert "    FAIL  cohort_gap_max             0.14  threshold 0.1" in lines
    assert "    22:14:20  pass         gap 0.01 <= 0.05" in lines
    assert lines[-2:] == ["    22:13:20  triggered          triggered by drift_detected",
                          "    23:15:25  training           5 rounds"]


def test_render_run_leaves_out_what_a_young_run_does_not_have_yet() -> None:
    young = {**RUN, "status": "refused", "reason": "no devices", "candidate_version": None,
             "training_run_id": None, "rollout_id": None, "approved_by": None, "results": {}}

    text = render_run(young, timeline=False)

    assert text.splitlines() == [
        "pipeline run 7  digits  [refused]  no devices",
        "  trigger drift_detected on digits/3@lab; champion v3; candidate -",
    ]


def test_policy_check_summarises_a_good_file(tmp_path: Path) -> None:
    result = run_edgeops("pipeline", "policy", "check", str(DEFAULT_POLICY), timeout=60)

    assert result.returncode == 0, result.stderr
    assert f"{DEFAULT_POLICY}: a valid release policy for model 'digits'" in result.stdout
    assert "approval: automatic; canary steps 20%, 50%, 100%" in result.stdout


def test_policy_check_names_the_problem_in_a_bad_file_and_exits_3(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text('model = "digits"\n[canary]\nstep_weights = [50.0, 20.0]\n')

    result = run_edgeops("pipeline", "policy", "check", str(bad), timeout=60)

    assert result.returncode == ExitCode.CONFIG
    assert "canary.step_weights" in result.stderr and "increasing" in result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PipelineWorld, list[str]]]:
    """The world's app on a live port, and the connection options of an operator."""
    folder = tmp_path_factory.mktemp("pipeline-cli")
    token_file = folder / "operator.token"
    with pipeline_world(folder) as world:
        token_file.write_text(world.tokens["operator"])
        with live_server(world.app) as url:
            yield world, ["--server", url, "--token-file", str(token_file)]


def pipeline(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.mark.integration  # a live HTTP server on a local port
@pytest.mark.parametrize(("final", "code"), [
    ("promoted", ExitCode.OK), ("rolled_back", ExitCode.UPDATE), ("refused", ExitCode.GATE_REFUSED),
])
def test_watch_exits_with_the_code_of_how_the_run_ended(
        served: tuple[PipelineWorld, list[str]], final: str, code: int) -> None:
    world, conn = served
    run_id = seed_run(world.session_factory, f"ended-{final}", final, reason=f"it was {final}")

    result = pipeline("watch", str(run_id), *conn)

    assert result.exit_code == code, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(path_to(final)) + 1
    assert lines[-1] == f"run {run_id} {final}: it was {final}"


@pytest.mark.integration
def test_watch_prints_each_new_entry_once_while_the_run_moves(
        served: tuple[PipelineWorld, list[str]]) -> None:
    world, conn = served
    run_id = seed_run(world.session_factory, "moving", "canary")

    def finish_later() -> None:
        time.sleep(0.4)
        with world.session_factory.begin() as session:
            run = store.get_run(session, run_id)
            store.note(session, run, "canary check failed", T0 + 500)
            store.move(session, run, "rolled_back", "canary worse than control", T0 + 510)

    mover = threading.Thread(target=finish_later)
    mover.start()
    result = pipeline("watch", str(run_id), "--interval", "0.1", "--json", *conn)
    mover.join()

    assert result.exit_code == ExitCode.UPDATE, result.output
    *entries, last = [json.loads(line) for line in result.output.splitlines()]
    assert [(e["status"], e["message"]) for e in entries[-2:]] == [
        ("canary", "canary check failed"), ("rolled_back", "canary worse than control")]
    assert len(entries) == len(path_to("canary")) + 2 and {e["run"] for e in entries} == {run_id}
    assert last["status"] == "rolled_back" and last["reason"] == "canary worse than control"


@pytest.mark.integration
def test_watch_gives_up_after_its_timeout(served: tuple[PipelineWorld, list[str]]) -> None:
    world, conn = served
    run_id = seed_run(world.session_factory, "slow", "training")

    started = time.monotonic()
    result = pipeline("watch", str(run_id), "--interval", "0.1", "--timeout", "0.3", *conn)

    assert result.exit_code == ExitCode.FAILURE
    assert time.monotonic() - started < 3
    assert f"run {run_id} is still training after 0.3 s" in result.output


@pytest.mark.integration
def test_run_list_status_and_approve_go_through_the_api(
        served: tuple[PipelineWorld, list[str]]) -> None:
    world, conn = served
    started = pipeline("run", "--model", "digits", "--json", *conn)
    assert started.exit_code == 0, started.output
    run = json.loads(started.output)
    waiting = seed_run(world.session_factory, "to-approve", "awaiting_approval")

    listed = pipeline("list", "--model", "digits", "--json", *conn)
    status = pipeline("status", str(run["id"]), *conn)
    approved = pipeline("approve", str(waiting), "--json", *conn)
    bad_status = pipeline("list", "--status", "exploded", *conn)

    assert [r["id"] for r in json.loads(listed.output)["runs"]] == [run["id"]]
    assert status.output.splitlines()[0] == f"pipeline run {run['id']}  digits  [triggered]"
    assert render_timeline_entry(run["timeline"][0]) in status.output
    assert json.loads(approved.output)["approved_by"] == "operator-1"
    assert bad_status.exit_code == ExitCode.USAGE and "awaiting_approval" in bad_status.output
    with world.session_factory.begin() as session:
        store.move(session, store.get_run(session, run["id"]), "refused", "test over", T0)
