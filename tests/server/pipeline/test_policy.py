"""The release policy: defaults, the documented file, round trips and every validation error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeops.errors import ConfigError
from server.federated.config import FederatedConfig
from server.pipeline.policy import (
    DEFAULT_POLICY_TOML,
    POLICY_SCHEMA_VERSION,
    RECOMMENDED_GATES,
    CanaryPolicy,
    GatePolicy,
    ReleasePolicy,
    RetrainingPolicy,
    TriggerPolicy,
    default_policy,
    load_policy,
    parse_policy,
)
from server.rollouts.controller import RolloutPolicy

pytestmark = [pytest.mark.pipeline]

REPO = Path(__file__).resolve().parents[3]


def _error(text: str, source: str = "p.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source=source)
    return str(caught.value)


def test_default_file_is_the_documented_text() -> None:
    assert (REPO / "examples" / "policies" / "default.toml").read_text() == DEFAULT_POLICY_TOML


def test_default_policy_loads_from_the_example_file() -> None:
    policy = load_policy(REPO / "examples" / "policies" / "default.toml")

    assert policy == default_policy()
    assert policy.model == "digits"
    assert policy.triggers.events == ("drift_detected", "quality_dropped")
    assert policy.retraining.secagg is True and policy.retraining.min_devices == 3
    assert policy.canary.step_weights == (20.0, 50.0, 100.0)
    assert policy.approval.mode == "automatic"


def test_the_documented_values_are_the_defaults() -> None:
    # A policy naming only its model must equal the file that writes every key out.
    assert parse_policy('model = "digits"') == default_policy()
    assert default_policy().gates == RECOMMENDED_GATES


def test_defaults_come_from_the_parts_that_own_them() -> None:
    training = FederatedConfig()

    retraining = RetrainingPolicy()
    canary = CanaryPolicy()

    assert retraining.rounds == training.num_rounds
    assert retraining.local_epochs == training.local_epochs
    assert retraining.learning_rate == training.learning_rate
    assert canary.health_failure_threshold_pct == RolloutPolicy().failure_threshold_pct


def test_a_gates_table_checks_only_what_it_writes() -> None:
    policy = parse_policy('model = "digits"\n[gates]\nfleet_change_min = 0.0\n')

    assert policy.gates.fleet_change_min == 0.0
    assert policy.gates.heldout_accuracy_min is None
    assert policy.gates.int8_drop_pp_max is None


def test_integers_are_accepted_for_numbers() -> None:
    policy = parse_policy('model = "m"\n[canary]\nstep_weights = [10, 100]\ninterval_s = 60\n')

    assert policy.canary.step_weights == (10.0, 100.0)
    assert policy.canary.interval_s == 60.0


def test_json_round_trip_is_plain_and_lossless() -> None:
    policy = parse_policy(
        'model = "digits"\n[triggers]\ncohorts = ["lab", "field"]\nschedule_s = 3600\n'
        '[retraining]\nsecagg = false\nmin_devices = 1\nstrategy = "fedprox"\n'
        '[gates]\nclass_recall_min = 0.6\np50_latency_us_max = 2500\n'
        '[approval]\nmode = "manual"\ntimeout_s = 60\n'
    )

    stored = policy.to_json()
    restored = ReleasePolicy.from_json(json.loads(json.dumps(stored)))

    assert stored["schema_version"] == POLICY_SCHEMA_VERSION
    assert stored["triggers"]["cohorts"] == ["lab", "field"]
    assert stored["gates"]["heldout_accuracy_min"] is None
    assert restored == policy
    assert restored.retraining.strategy == "fedprox"
    assert restored.gates.p50_latency_us_max == 2500.0


def test_from_json_refuses_another_schema_version() -> None:
    stored = default_policy().to_json()
    stored["schema_version"] = 99

    with pytest.raises(ConfigError, match="schema_version must be 1, got 99"):
        ReleasePolicy.from_json(stored)


def test_from_json_names_the_bad_key() -> None:
    stored = default_policy().to_json()
    stored["canary"]["failure_limit"] = 0

    with pytest.raises(ConfigError, match=r"(?s)stored policy JSON is not a valid.*canary\.failure_limit"):
        ReleasePolicy.from_json(stored)


def test_models_are_frozen() -> None:
    policy = default_policy()

    with pytest.raises(ValueError, match="frozen"):
        policy.canary.min_inferences = 1


@pytest.mark.parametrize(
    ("body", "key", "what"),
    [
        ("", "model", "required key is missing"),
        ('model = "a b"', "model", "without spaces"),
        ("model = 3", "model", "valid string"),
        ('model = "m"\nextra = 1', "extra", "unknown key; known keys in the top level: approval"),
        ('model = "m"\n[canary]\nsteps = [1]', "canary.steps", "known keys in canary: failure_limit"),
        ('model = "m"\ncanary = 3', "canary", "must be a table"),
        ('model = "m"\n[triggers]\nevents = ["drift"]', "triggers.events.0", "'drift_detected'"),
        ('model = "m"\n[triggers]\nevents = ["drift_detected", "drift_detected"]',
         "triggers.events", "listed more than once: drift_detected"),
        ('model = "m"\n[triggers]\ncohorts = ["lab", "lab"]', "triggers.cohorts",
         "listed more than once: lab"),
        ('model = "m"\n[triggers]\ncohorts = [""]', "triggers.cohorts.0", "at least 1 character"),
        ('model = "m"\n[triggers]\nschedule_s = -1', "triggers.schedule_s", "greater than or equal to 0"),
        ('model = "m"\n[triggers]\ncooldown_s = "1h"', "triggers.cooldown_s", "valid number"),
        ('model = "m"\n[triggers]\nmanual = "yes"', "triggers.manual", "valid boolean"),
        ('model = "m"\n[triggers]\nevents = []\nmanual = false', "triggers",
         "nothing can start a run"),
        ('model = "m"\n[retraining]\nstrategy = "fedsgd"', "retraining.strategy",
         "'fedavg', 'fedprox' or 'fedadam'"),
        ('model = "m"\n[retraining]\nrounds = 0', "retraining.rounds", "greater than or equal to 1"),
        ('model = "m"\n[retraining]\nrounds = 2.5', "retraining.rounds", "valid integer"),
        ('model = "m"\n[retraining]\nlocal_epochs = true', "retraining.local_epochs", "valid integer"),
        ('model = "m"\n[retraining]\nlearning_rate = 0', "retraining.learning_rate", "greater than 0"),
        ('model = "m"\n[retraining]\nparticipants = "all"', "retraining.participants", "'fleet'"),
        ('model = "m"\n[retraining]\nmin_devices = 2', "retraining.min_devices",
         "SecAgg+ needs at least 3 devices, got 2"),
        ('model = "m"\n[retraining]\nmin_devices = 0\nsecagg = false', "retraining.min_devices",
         "greater than or equal to 1"),
        ('model = "m"\n[gates]\nheldout_accuracy_min = 1.5', "gates.heldout_accuracy_min",
         "less than or equal to 1"),
        ('model = "m"\n[gates]\nfleet_change_min = -2', "gates.fleet_change_min",
         "greater than or equal to -1"),
        ('model = "m"\n[gates]\nfleet_change_min = 0\nmin_fleet_examples = -5',
         "gates.min_fleet_examples", "greater than or equal to 0"),
        ('model = "m"\n[gates]\nfleet_change_min = 0\nint8_drop_pp_max = 101',
         "gates.int8_drop_pp_max", "less than or equal to 100"),
        ('model = "m"\n[gates]\nfleet_change_min = 0\np50_latency_us_max = 0',
         "gates.p50_latency_us_max", "greater than 0"),
        ('model = "m"\n[gates]\nint8_drop_pp_max = 1.0', "gates", "no evaluation gate is set"),
        ('model = "m"\n[gates]\nheldout_min = 0.9', "gates.heldout_min", "unknown key"),
        ('model = "m"\n[approval]\nmode = "auto"', "approval.mode", "'automatic' or 'manual'"),
        ('model = "m"\n[approval]\ntimeout_s = 0', "approval.timeout_s", "greater than 0"),
        ('model = "m"\n[canary]\nstep_weights = [50, 20, 100]', "canary.step_weights",
         "strictly increasing, got [50, 20, 100]"),
        ('model = "m"\n[canary]\nstep_weights = [10, 10, 100]', "canary.step_weights",
         "strictly increasing"),
        ('model = "m"\n[canary]\nstep_weights = [10, 50]', "canary.step_weights",
         "the last step must be 100, got [10, 50]"),
        ('model = "m"\n[canary]\nstep_weights = [100]', "canary.step_weights",
         "at least one canary step below 100"),
        ('model = "m"\n[canary]\nstep_weights = []', "canary.step_weights", "the last step must be 100"),
        ('model = "m"\n[canary]\nstep_weights = [0, 100]', "canary.step_weights.0", "greater than 0"),
        ('model = "m"\n[canary]\nstep_weights = [50, 120]', "canary.step_weights.1",
         "less than or equal to 100"),
        ('model = "m"\n[canary]\ninterval_s = 0', "canary.interval_s", "greater than 0"),
        ('model = "m"\n[canary]\nfailure_limit = 0', "canary.failure_limit", "greater than or equal to 1"),
        ('model = "m"\n[canary]\nmin_inferences = 0', "canary.min_inferences",
         "greater than or equal to 1"),
        ('model = "m"\n[canary]\nmax_accuracy_drop = 1.2', "canary.max_accuracy_drop",
         "less than or equal to 1"),
        ('model = "m"\n[canary]\ninterval_s = 300\ninconclusive_timeout_s = 100',
         "canary.inconclusive_timeout_s", "at least interval_s (300 s), got 100 s"),
        ('model = "m"\n[canary]\nhealth_failure_threshold_pct = 0', "canary.health_failure_threshold_pct",
         "greater than 0"),
    ],
)
def test_every_error_names_the_file_and_the_key(body: str, key: str, what: str) -> None:
    message = _error(body, source="policies/bad.toml")

    assert message.startswith("policies/bad.toml is not a valid release policy:")
    line = next(ln for ln in message.splitlines()[1:] if ln.strip().startswith(f"{key}:"))
    assert what in line


def test_every_problem_is_reported_at_once() -> None:
    message = _error('[retraining]\nmin_devices = 2\n[canary]\nfailure_limit = 0\n')

    lines = [ln.strip() for ln in message.splitlines()[1:]]
    assert [ln.split(":")[0] for ln in lines] == [
        "model", "retraining.min_devices", "canary.failure_limit",
    ]


def test_bad_toml_names_the_source_and_the_position() -> None:
    message = _error('model = "digits"\n[canary\n', source="p.toml")

    assert message.startswith("p.toml is not valid TOML:")
    assert "line 2" in message


def test_load_policy_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no release policy file at .*absent.toml"):
        load_policy(tmp_path / "absent.toml")


def test_load_policy_names_the_file_of_a_bad_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('model = "m"\n[approval]\nmode = "later"\n')

    with pytest.raises(ConfigError, match=r"policy\.toml is not a valid release policy") as caught:
        load_policy(path)
    assert "approval.mode" in str(caught.value)


def test_sections_validate_when_built_directly() -> None:
    with pytest.raises(ValueError, match="nothing can start a run"):
        TriggerPolicy(events=(), manual=False)
    with pytest.raises(ValueError, match="no evaluation gate"):
        GatePolicy()
    assert TriggerPolicy(events=(), schedule_s=60.0, manual=False).schedule_s == 60.0
