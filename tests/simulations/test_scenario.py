"""The scenario schema (simulations/scenario.py): the built-ins load, every kind of mistake is
refused with the file, the key path and the reason, and a scenario survives report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeops.errors import ConfigError
from server.pipeline.policy import default_policy, parse_policy
from simulations.scenario import (
    BUILTIN_POLICIES,
    KILL_POINTS,
    DriftEvent,
    KillServerEvent,
    RecoveredAssertion,
    Scenario,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

BUILTINS = ("bad-candidate", "baseline", "drift-recovery", "faults", "scale")

# A valid scenario; each test below breaks one thing in it.
GOOD = """
name = "mine"
duration_s = 60
[fleet]
devices = 6
cohorts = { north = 2, south = 4 }
agent_processes = 2
[policy]
retraining = { participants = "fleet" }
[[events]]
at_s = 10
kind = "drift"
cohort = "north"
drift = "offset"
amount = 0.5
[[events]]
at_s = 20
kind = "broker_down"
duration_s = 5
[[assertions]]
kind = "recovered"
cohort = "north"
within_pp_of_before = 3
"""


def _with_policy_name(policy: str) -> str:
    """GOOD with `policy = "<policy>"` instead of its [policy] table."""
    text = GOOD.replace('[policy]\nretraining = { participants = "fleet" }\n', "")
    return text.replace("duration_s = 60\n", f'duration_s = 60\npolicy = "{policy}"\n')


def _refusal(text: str, source: str = "mine.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, source)
    return str(caught.value)


def test_every_builtin_loads_by_name() -> None:
    assert builtin_scenarios() == BUILTINS
    for name in BUILTINS:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.assertions, f"{name} asserts nothing"


def test_drift_recovery_is_a_third_of_nine_devices_drifting_under_automatic_approval() -> None:
    scenario = load_scenario("drift-recovery")
    assert scenario.fleet.cohorts == {"north": 3, "south": 3, "east": 3}
    assert scenario.fleet.assignment() == ("north", "south", "east") * 3
    (drift,) = scenario.events
    assert isinstance(drift, DriftEvent)
    assert (drift.cohort, drift.drift, drift.amount) == ("north", "offset", 0.5)
    assert scenario.policy is not None and scenario.policy.approval.mode == "automatic"
    assert scenario.policy.canary.step_weights == (50.0, 100.0)
    assert [a.kind for a in scenario.assertions] == [
        "detected_within_windows", "recovered", "control_kept", "pipeline_ended",
        "no_half_updated", "trained_once"]


def test_scale_shares_become_counts_and_follow_an_override() -> None:
    scenario = load_scenario("scale")
    assert (scenario.fleet.devices, scenario.fleet.agent_processes) == (1000, 8)
    assert scenario.fleet.cohorts == {"north": 500, "south": 500}
    assert scenario.policy is None
    smaller = scenario.override(devices=7, seed=3)
    assert smaller.fleet.cohorts == {"north": 4, "south": 3}
    assert smaller.seed == 3 and smaller.fleet.agent_processes == 7


def test_a_file_path_loads_and_a_relative_policy_path_is_read_beside_it(tmp_path: Path) -> None:
    (tmp_path / "release.toml").write_text(
        'model = "digits"\n[retraining]\nparticipants = "fleet"\n[canary]\nstep_weights = [10, 100]\n')
    path = tmp_path / "mine.toml"
    path.write_text(_with_policy_name("release.toml"))
    scenario = load_scenario(path)
    assert scenario.policy is not None
    assert scenario.policy.canary.step_weights == (10.0, 100.0)
    assert load_scenario(str(path)).name == "mine"


def test_the_builtin_policy_name_is_the_default_policy() -> None:
    text = _with_policy_name(BUILTIN_POLICIES[0])
    text = text.replace("north = 2, south = 4", "north = 3, south = 3")
    assert parse_scenario(text).policy == default_policy()


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD + 'colour = "red"\n', "assertions[0].colour: unknown key; known keys here:"),
    (GOOD.replace("[fleet]", "[fleet]\nsize = 3"), "fleet.size: unknown key"),
    (GOOD.replace('amount = 0.5', 'amount = 0.5\nstrength = 2'), "events[0].strength: unknown key"),
    (GOOD.replace("at_s = 20", "at_s = 61"),
     "events[1].at_s: 61 s is after the end (duration_s = 60)"),
    (GOOD.replace("at_s = 20", "at_s = 58"),
     "events[1]: broker_down lasts until 63 s, after the end (duration_s = 60)"),
    (GOOD.replace('cohort = "north"\ndrift', 'cohort = "west"\ndrift'),
     "events[0].cohort: no cohort 'west' in fleet.cohorts (north, south)"),
    (GOOD.replace('cohort = "north"\nwithin', 'cohort = "south"\nwithin'),
     "assertions[0].cohort: no drift or label_fault on 'south' to recover from"),
    (GOOD.replace('retraining = { participants = "fleet" }',
                  'retraining = { participants = "fleet" }\ncanary = { step_weights = [50, 40] }'),
     "policy.canary.step_weights: must be strictly increasing, got [50, 40]"),
    (GOOD.replace('retraining = { participants = "fleet" }', 'retraining = { speed = 2 }'),
     "policy.retraining.speed: unknown key"),
    (GOOD.replace("agent_processes = 2", 'agent_processes = "2"'),
     "fleet.agent_processes: Input should be a valid integer (got '2')"),
    (GOOD.replace("duration_s = 60", "duration_s = true"), "duration_s: Input should be a valid number"),
    (GOOD.replace('kind = "broker_down"', 'kind = "meteor"'), "events[1].kind: must be one of"),
    (GOOD.replace("amount = 0.5", "amount = 3"), "events[0].amount: must be in (0, 1]"),
    (GOOD.replace("north = 2, south = 4", "north = 2, south = 3"),
     "fleet.cohorts: counts add up to 5, but fleet.devices is 6"),
    (GOOD.replace("north = 2, south = 4", "north = 0.5, south = 0.6"),
     "fleet.cohorts: shares add up to 1.1, not 1"),
    (GOOD.replace("within_pp_of_before = 3", "within_pp_of_before = 3\naccuracy_at_least = 0.9"),
     "assertions[0]: set exactly one of accuracy_at_least and within_pp_of_before"),
    (GOOD + '[[events]]\nat_s = 22\nkind = "broker_down"\nduration_s = 5\n',
     "events[2]: broker_down from 22 to 27 s overlaps events[1] (20 to 25 s)"),
    (GOOD + '[[events]]\nat_s = 30\nkind = "approve"\n',
     "events[2]: approve, but policy.approval.mode is 'automatic'"),
    (GOOD.replace('retraining = { participants = "fleet" }',
                  'retraining = { participants = "drifted_cohort" }'),
     "policy.retraining.min_devices: 3 devices needed, cohort north has 2"),
    (GOOD + '[[events]]\nkind = "kill_server"\nat_pipeline_state = "promoted"\n',
     "events[2].at_pipeline_state: Input should be 'triggered'"),
    (GOOD + '[[events]]\nkind = "kill_server"\n',
     "events[2]: set exactly one of at_s and at_pipeline_state"),
    ("name = [1\n", "mine.toml is not valid TOML"),
])
def test_each_mistake_is_refused_naming_the_file_the_key_and_the_reason(
    text: str, expected: str
) -> None:
    message = _refusal(text)
    assert message.startswith("mine.toml is not")
    assert expected in message


def test_every_mistake_in_a_file_is_reported_at_once() -> None:
    text = GOOD.replace("agent_processes = 2", "agent_processes = 0").replace(
        "amount = 0.5", "amount = -1") + 'colour = "red"\n'
    lines = _refusal(text).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "fleet.agent_processes", "events[0].amount", "assertions[0].colour"]


def test_every_rule_between_keys_is_reported_at_once() -> None:
    text = GOOD.replace("at_s = 20", "at_s = 61").replace(
        'cohort = "north"\ndrift', 'cohort = "west"\ndrift')
    lines = _refusal(text).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "events[0].cohort", "events[1].at_s", "assertions[0].cohort"]


def test_the_example_in_the_documentation_is_a_valid_scenario() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "scenarios.md").read_text()
    example = doc.split("## An example")[1].split("```toml\n")[1].split("```")[0]
    scenario = parse_scenario(example, "docs/scenarios.md")
    assert scenario.fleet.cohorts == {"north": 4, "south": 4}
    assert [e.kind for e in scenario.events] == ["drift", "offline", "approve"]


def test_a_missing_or_unknown_scenario_is_a_config_error_naming_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no built-in scenario 'drfit-recovery'.*drift-recovery"):
        load_scenario("drfit-recovery")
    with pytest.raises(ConfigError, match="no scenario file at"):
        load_scenario(tmp_path / "nope.toml")


def test_to_json_is_a_plain_dict_that_reads_back_as_the_same_scenario() -> None:
    for name in BUILTINS:
        scenario = load_scenario(name)
        stored = json.loads(json.dumps(scenario.to_json()))
        assert stored["schema_version"] == 1 and stored["name"] == name
        assert Scenario.from_json(stored) == scenario


def test_stored_json_of_another_schema_version_is_refused() -> None:
    stored = load_scenario("baseline").to_json() | {"schema_version": 2}
    with pytest.raises(ConfigError, match="schema_version must be 1, got 2"):
        Scenario.from_json(stored)


def test_policy_toml_reads_back_as_the_scenarios_policy() -> None:
    scenario = load_scenario("drift-recovery")
    assert parse_policy(scenario.policy_toml(), "written") == scenario.policy
    assert load_scenario("baseline").policy_toml() == ""


def test_assertions_get_a_default_name_and_the_kill_server_event_a_pipeline_point() -> None:
    scenario = load_scenario("faults")
    kill = [e for e in scenario.events if isinstance(e, KillServerEvent)]
    assert [(k.at_s, k.at_pipeline_state, k.ends_at_s) for k in kill] == [(None, "training", None)]
    assert "packaging:published" in KILL_POINTS
    recovered = load_scenario("drift-recovery").assertions[1]
    assert isinstance(recovered, RecoveredAssertion) and recovered.name == "recovered north"
