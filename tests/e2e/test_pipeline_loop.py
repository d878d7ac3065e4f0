"""The continuous-delivery loop end to end on real parts: Mosquitto, `edgeops server run`,
real agents, Flower's Simulation Engine with SecAgg+ (simulations/loop.py drives traffic,
drift and faults; the server decides everything).

Each test is one fleet of six devices in two groups and one release policy:

- a drift on `north` is detected, retrained on the devices' fresh data, gated, signed,
  canaried against the control cohort and promoted, and north recovers (no person);
- a candidate trained on corrupted labels is refused at a gate and never published;
- a candidate the (lax) gates let through but that regresses on its canary is rolled back;
- a run under manual approval waits, then proceeds when an operator approves it;
- the server is SIGKILLed at pipeline points and restarted: the run still ends, trained once
  and published once (the full table, one kill per run, is `slow`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.loop import LoopConfig, LoopResult, laptop_policy, run_loop

pytestmark = [pytest.mark.pipeline, pytest.mark.e2e, pytest.mark.integration,
              pytest.mark.timeout(600)]

# Gates a careless operator might write: only "enough labelled data". The canary is what
# stops a bad candidate then.
LAX_POLICY = """
model = "digits"
[triggers]
events = ["drift_detected"]
[retraining]
rounds = 2
local_epochs = 5
learning_rate = 0.05
participants = "fleet"
[gates]
min_fleet_examples = 1
[canary]
step_weights = [50, 100]
interval_s = 8
failure_limit = 2
min_inferences = 60
max_accuracy_drop = 0.05
inconclusive_timeout_s = 60
"""


def _loop(tmp_path: Path, policy: str, **kwargs: object) -> LoopResult:
    return run_loop(LoopConfig(out_dir=tmp_path / "loop", policy_toml=policy, **kwargs), print)  # type: ignore[arg-type]


def _statuses(result: LoopResult) -> list[str]:
    return [entry["status"] for entry in result.run["timeline"]]


def _assert_promoted_once(result: LoopResult) -> None:
    run = result.run
    assert run["status"] == "promoted", run["reason"]
    assert result.training_runs == 1  # trained once
    assert result.releases == 2  # the champion and this run's candidate: published once
    assert set(result.device_versions.values()) == {run["candidate_version"]}


def test_drift_is_detected_retrained_canaried_and_promoted_without_a_person(tmp_path: Path) -> None:
    result = _loop(tmp_path, laptop_policy())
    run, figures = result.run, result.figures
    _assert_promoted_once(result)
    assert run["trigger"]["kind"] == "event" and run["trigger"]["group"] == "north"
    assert _statuses(result)[:8] == ["triggered", "training", "evaluating", "gated",
                                     "packaging", "signed", "awaiting_approval", "canary"]
    assert run["results"]["training"]["secure_aggregation"] is True
    assert run["results"]["participants"]["cohorts"] == {"north": 3, "south": 3}
    assert run["results"]["training"]["feedback_examples"] > 100
    assert all(g["passed"] for g in run["results"]["gates"])
    checks = run["results"]["canary"]["checks"]
    assert checks and checks[-1]["verdict"] == "pass"
    assert {e["group"] for e in checks[-1]["evidence"] if e["counted"]} == {"north", "south"}
    # The drift hurt north, and the promoted candidate brought it back.
    assert figures["accuracy_during"] < figures["accuracy_before"] - 0.05
    assert figures["accuracy_after"] >= figures["accuracy_before"] - 0.03
    assert figures["control_accuracy_after"] >= figures["control_accuracy_before"] - 0.02


def test_a_candidate_trained_on_corrupted_labels_is_refused_at_a_gate(tmp_path: Path) -> None:
    result = _loop(tmp_path, laptop_policy(), drift="none",
                   label_fault="shuffle", trigger="manual")
    run = result.run
    assert run["status"] == "refused"
    assert run["reason"].startswith("refused at a gate:")
    assert "signed" not in _statuses(result) and run["candidate_version"] is None
    assert result.releases == 1  # never published
    assert any(not g["passed"] for g in run["results"]["gates"])
    assert set(result.device_versions.values()) == {1}


def test_a_candidate_that_regresses_on_its_canary_is_rolled_back(tmp_path: Path) -> None:
    result = _loop(tmp_path, LAX_POLICY)
    run = result.run
    assert run["status"] == "rolled_back", run["reason"]
    checks = run["results"]["canary"]["checks"]
    assert [c["verdict"] for c in checks][-2:] == ["fail", "fail"]
    assert run["reason"].startswith("rolled back:")
    assert set(result.device_versions.values()) == {1}  # every device back on the champion
    assert result.releases == 2  # the candidate was published and stays, unpromoted


def test_a_run_under_manual_approval_waits_then_proceeds_when_approved(tmp_path: Path) -> None:
    result = _loop(tmp_path, laptop_policy("manual"), approve=True)
    _assert_promoted_once(result)
    messages = [entry["message"] for entry in result.run["timeline"]]
    assert any(m.startswith("waiting for an operator's approval") for m in messages)
    assert any(m.startswith("approved by ") for m in messages)
    assert result.run["approved_by"]


def test_server_killed_at_pipeline_points_resumes_without_training_or_publishing_twice(
    tmp_path: Path,
) -> None:
    result = _loop(tmp_path, laptop_policy(),
                   kill_at=("training", "packaging:published", "canary"))
    assert result.server_restarts == 3
    _assert_promoted_once(result)
    assert result.run["training_attempts"] == 2  # the killed attempt, then one that finished


KILL_POINTS = ["triggered", "training", "evaluating", "gated", "packaging",
               "packaging:published", "signed", "awaiting_approval", "canary"]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_server_killed_at_each_pipeline_state_ends_the_run_cleanly(tmp_path: Path, point: str) -> None:
    result = _loop(tmp_path, laptop_policy(), kill_at=(point,))
    assert result.server_restarts == 1
    assert result.run["status"] in ("promoted", "rolled_back", "refused")
    assert result.training_runs == 1
    assert result.releases <= 2
