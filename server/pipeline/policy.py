"""The release policy: what starts a pipeline run, how it retrains, gates, approves and canaries.

    policy = load_policy(Path("policy.toml"))      # or parse_policy(text, source="...")
    stored = policy.to_json()                      # recorded with every run
    policy = ReleasePolicy.from_json(stored)       # the run's policy after a restart

A policy is a TOML file with a top-level `model` and the tables `[triggers]`, `[retraining]`,
`[gates]`, `[approval]` and `[canary]`; `DEFAULT_POLICY_TOML` (the text of
`examples/policies/default.toml`) documents every key. A key or table left out takes its
default, except inside a `[gates]` table: a gate not written there is not checked, so a policy
says which gates it relies on (at least one evaluation gate); without the table a policy gets
`RECOMMENDED_GATES`. Every problem is a ConfigError naming the source, the key path
(`canary.step_weights`) and what was wrong, all problems at once.

The models are frozen pydantic models (`extra="forbid"`); numbers and booleans must have their
TOML types (an integer is accepted for a number), never text to convert. Rules between keys (SecAgg+ needs three devices,
the last canary step is 100 %) are checked here, so a run never starts on a policy it cannot
follow. Rules of the runner (one run in flight per model) are not settings.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeops.errors import ConfigError
from edgeops.settings_file import read_toml
from server.federated.config import FederatedConfig, StrategyName
from server.rollouts.controller import RolloutPolicy

__all__ = [
    "DEFAULT_POLICY_TOML",
    "POLICY_SCHEMA_VERSION",
    "RECOMMENDED_GATES",
    "ApprovalPolicy",
    "CanaryPolicy",
    "GatePolicy",
    "ReleasePolicy",
    "RetrainingPolicy",
    "TriggerEvent",
    "TriggerPolicy",
    "default_policy",
    "load_policy",
    "parse_policy",
]

POLICY_SCHEMA_VERSION = 1

TriggerEvent = Literal["drift_detected", "quality_dropped"]
Participants = Literal["drifted_cohort", "fleet"]
ApprovalMode = Literal["automatic", "manual"]

Seconds = Annotated[float, Field(strict=True, ge=0)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0)]
Fraction = Annotated[float, Field(strict=True, ge=0, le=1)]
Change = Annotated[float, Field(strict=True, ge=-1, le=1)]
Percent = Annotated[float, Field(strict=True, gt=0, le=100)]
Count = Annotated[StrictInt, Field(ge=0)]
PositiveCount = Annotated[StrictInt, Field(ge=1)]

_TRAINING_DEFAULTS = FederatedConfig()
_ROLLOUT_DEFAULTS = RolloutPolicy()
SECAGG_MIN_DEVICES = 3  # SecAgg+ cannot mask an update among fewer clients


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: Sequence[str], what: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} listed more than once: {', '.join(repeated)}")


class TriggerPolicy(_Section):
    """What starts a run: monitor events (for some cohorts), a schedule, or a person."""

    events: tuple[TriggerEvent, ...] = ("drift_detected", "quality_dropped")
    cohorts: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = ()  # empty: any group
    schedule_s: Seconds = 0.0  # 0: no schedule
    cooldown_s: Seconds = 900.0  # no automatic run this soon after the last run ended
    manual: StrictBool = True

    @field_validator("events", "cohorts")
    @classmethod
    def _no_repeats(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        _unique(values, str(info.field_name))
        return values

    @model_validator(mode="after")
    def _something_starts_a_run(self) -> TriggerPolicy:
        if not self.events and self.schedule_s == 0 and not self.manual:
            raise ValueError(
                "nothing can start a run: list events, set schedule_s > 0 or manual = true"
            )
        return self


class RetrainingPolicy(_Section):
    """How the candidate is trained: federated, on which devices, from which weights."""

    warm_start: StrictBool = True
    strategy: StrategyName = _TRAINING_DEFAULTS.strategy.name
    rounds: PositiveCount = _TRAINING_DEFAULTS.num_rounds
    local_epochs: PositiveCount = _TRAINING_DEFAULTS.local_epochs
    learning_rate: Annotated[float, Field(strict=True, gt=0)] = _TRAINING_DEFAULTS.learning_rate
    secagg: StrictBool = True
    participants: Participants = "drifted_cohort"
    min_devices: PositiveCount = SECAGG_MIN_DEVICES
    # Before training, wait until the triggering cohort's devices hold this many labels
    # given since the trigger's window began (fresh data of the new conditions), at most
    # `fresh_labels_timeout_s`; 0: train on what is there.
    min_fresh_labels: Count = 0
    fresh_labels_timeout_s: PositiveSeconds = 600.0

    @field_validator("min_devices")
    @classmethod
    def _enough_for_secagg(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("secagg", True) and value < SECAGG_MIN_DEVICES:
            raise ValueError(
                f"SecAgg+ needs at least {SECAGG_MIN_DEVICES} devices, got {value} "
                "(raise min_devices or set secagg = false)"
            )
        return value


class GatePolicy(_Section):
    """TFMA-style thresholds; None (a key not written) means the gate is not checked.

    A value gate bounds the candidate's metric; a change gate bounds candidate minus champion
    on the same data. Accuracies are fractions; `int8_drop_pp_max` is in percentage points.
    """

    heldout_accuracy_min: Fraction | None = None
    heldout_change_min: Change | None = None
    fleet_accuracy_min: Fraction | None = None
    fleet_change_min: Change | None = None
    class_recall_min: Fraction | None = None
    cohort_gap_max: Fraction | None = None
    min_fleet_examples: Count | None = None
    int8_drop_pp_max: Annotated[float, Field(strict=True, ge=0, le=100)] | None = None
    int8_agreement_min: Fraction | None = None
    p50_latency_us_max: Annotated[float, Field(strict=True, gt=0)] | None = None

    @model_validator(mode="after")
    def _gates_something(self) -> GatePolicy:
        evaluation = (
            self.heldout_accuracy_min,
            self.heldout_change_min,
            self.fleet_accuracy_min,
            self.fleet_change_min,
            self.class_recall_min,
            self.cohort_gap_max,
        )
        if all(threshold is None for threshold in evaluation):
            raise ValueError(
                "no evaluation gate is set, so any candidate would be released: set at least "
                "one of heldout_accuracy_min, heldout_change_min, fleet_accuracy_min, "
                "fleet_change_min, class_recall_min, cohort_gap_max"
            )
        return self


RECOMMENDED_GATES = GatePolicy(
    heldout_accuracy_min=0.9,
    heldout_change_min=-0.01,
    min_fleet_examples=200,
    fleet_change_min=0.0,
    class_recall_min=0.7,
    cohort_gap_max=0.1,
    int8_drop_pp_max=1.0,
    int8_agreement_min=0.98,
)
"""The gates of a policy without a [gates] table (those DEFAULT_POLICY_TOML writes out)."""


class ApprovalPolicy(_Section):
    """Whether a person must approve before the release goes past its canary."""

    mode: ApprovalMode = "automatic"
    timeout_s: PositiveSeconds = 3600.0


class CanaryPolicy(_Section):
    """The canary waves and how each is judged (health window and label-free quality)."""

    step_weights: tuple[Percent, ...] = (20.0, 50.0, 100.0)
    interval_s: PositiveSeconds = 120.0
    failure_limit: PositiveCount = 2
    min_inferences: PositiveCount = 200
    max_accuracy_drop: Fraction = 0.05
    inconclusive_timeout_s: PositiveSeconds = 900.0
    health_failure_threshold_pct: Percent = _ROLLOUT_DEFAULTS.failure_threshold_pct

    @field_validator("step_weights")
    @classmethod
    def _waves(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        shown = [f"{s:g}" for s in steps]
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"must be strictly increasing, got [{', '.join(shown)}]")
        if not steps or steps[-1] != 100:
            raise ValueError(f"the last step must be 100, got [{', '.join(shown)}]")
        if len(steps) < 2:
            raise ValueError("needs at least one canary step below 100 before the full fleet")
        return steps

    @field_validator("inconclusive_timeout_s")
    @classmethod
    def _outlasts_a_step(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval_s")
        if interval is not None and value < interval:
            raise ValueError(f"must be at least interval_s ({interval:g} s), got {value:g} s")
        return value


class ReleasePolicy(_Section):
    """A validated release policy for one registry model."""

    model: StrictStr
    triggers: TriggerPolicy = TriggerPolicy()
    retraining: RetrainingPolicy = RetrainingPolicy()
    gates: GatePolicy = RECOMMENDED_GATES
    approval: ApprovalPolicy = ApprovalPolicy()
    canary: CanaryPolicy = CanaryPolicy()

    @field_validator("model")
    @classmethod
    def _model_name(cls, name: str) -> str:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"must be a registry model name without spaces, got {name!r}")
        return name

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict (with its schema version), stored with every run."""
        return {"schema_version": POLICY_SCHEMA_VERSION, **self.model_dump(mode="json")}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReleasePolicy:
        """The policy `to_json` stored; ConfigError for another schema version or bad data."""
        data = dict(raw)
        version = data.pop("schema_version", None)
        if version != POLICY_SCHEMA_VERSION:
            raise ConfigError(
                f"stored policy JSON: schema_version must be {POLICY_SCHEMA_VERSION}, "
                f"got {version!r}"
            )
        return _validate(data, "stored policy JSON")


def _known_keys(loc: Sequence[int | str]) -> list[str] | None:
    """The keys allowed in the table at `loc` (the location of an unknown key)."""
    model: type[BaseModel] = ReleasePolicy
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return sorted(model.model_fields)


def _describe(error: Mapping[str, Any]) -> str:
    """One readable line for one pydantic error: `key.path: what was wrong (got ...)`."""
    loc = tuple(error["loc"])
    where = ".".join(str(part) for part in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc)
        table = ".".join(str(p) for p in loc[:-1]) or "the top level"
        hint = f"; known keys in {table}: {', '.join(known)}" if known else ""
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "model_type":
        return f"{where}: must be a table ([{where}]), got {error.get('input')!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return f"{where}: {message}"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{where}: {message} (got {shown})"


def _validate(data: Mapping[str, Any], source: str) -> ReleasePolicy:
    try:
        return ReleasePolicy.model_validate(data)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{source} is not a valid release policy:\n  " + "\n  ".join(lines)) from err


def parse_policy(text: str, source: str = "<policy>") -> ReleasePolicy:
    """The policy in the TOML `text`; `source` names it in errors (a file name)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from err
    return _validate(table, source)


def load_policy(path: Path) -> ReleasePolicy:
    """The policy in the TOML file `path`; ConfigError if it is missing, not TOML or invalid."""
    table = read_toml(path, missing=f"no release policy file at {path}")
    return _validate(table, str(path))


def default_policy() -> ReleasePolicy:
    """The policy `DEFAULT_POLICY_TOML` describes."""
    return parse_policy(DEFAULT_POLICY_TOML, source="the default release policy")


DEFAULT_POLICY_TOML = '''\
# The release policy of one model: what starts a pipeline run, how the candidate is
# retrained, which gates it must pass, who approves it and how its canary is judged.
# `edgeops pipeline run` and the automatic triggers both follow it; a copy is stored with
# every run. Keys (and tables) left out take the values shown here; inside a [gates] table,
# a gate left out is not checked.
# Times are in seconds, accuracies are fractions (0.978), percentages are 0-100.

# The registry model this policy governs: its champion is retrained and replaced.
model = "digits"

[triggers]
# Monitor events that start a run: "drift_detected" (the inputs of a cohort moved away from
# the release's reference) and "quality_dropped" (its estimated or realised accuracy fell
# below the release's held-out accuracy by more than the monitor allows). [] = none.
events = ["drift_detected", "quality_dropped"]
# Device groups whose events count; [] = any group, and the whole fleet.
cohorts = []
# Start a run every this many seconds even without an event; 0 = no schedule.
schedule_s = 0.0
# No automatic run (event or schedule) starts within this many seconds of the end of the
# last run of this model; a person can still start one.
cooldown_s = 900.0
# Whether a person may start a run with `edgeops pipeline run`.
manual = true

[retraining]
# Start from the champion's weights (true) or from scratch (false).
warm_start = true
# Federated aggregation: "fedavg", "fedprox" or "fedadam".
strategy = "fedavg"
# Federated rounds, local epochs per round, and the clients' learning rate.
rounds = 5
local_epochs = 2
learning_rate = 0.001
# Secure aggregation (SecAgg+): the server only sees the sum of the updates.
secagg = true
# Who trains: "drifted_cohort" (the devices of the cohort whose event started the run) or
# "fleet" (every device). The devices train on their own fresh labelled data; it never
# leaves them.
participants = "drifted_cohort"
# Fewer devices available than this and the run is refused before training. SecAgg+
# needs at least 3.
min_devices = 3
# Wait before training until the cohort that started the run holds this many labels given
# since its drift began (the fresh data the retraining learns the new conditions from);
# after fresh_labels_timeout_s it trains on what there is. 0 = do not wait.
min_fresh_labels = 0
fresh_labels_timeout_s = 600.0

[gates]
# TFMA-style thresholds. Without a [gates] table a policy gets the gates below; with one,
# only the gates it writes are checked (and at least one evaluation gate must be). "change" = candidate minus champion on the same data; a change
# gate fails when there is no champion to compare with. A metric that was not measured fails
# its gate. Checked after evaluation:
#   heldout_accuracy_min   candidate accuracy on the server's held-out split, at least
#   heldout_change_min     its change against the champion, at least (-0.01: may lose 1 pp)
#   min_fleet_examples     labelled examples in the federated evaluation of the fleet's
#                          fresh data, at least (fewer: fails as "insufficient data")
#   fleet_accuracy_min     candidate accuracy on that federated evaluation, at least
#   fleet_change_min       its change against the champion, at least (0.0: no worse)
#   class_recall_min       recall of every class, at least
#   cohort_gap_max         best minus worst cohort accuracy of the candidate on the
#                          federated evaluation, at most
# Checked after packaging:
#   int8_drop_pp_max       int8 accuracy below fp32, in percentage points, at most
#   int8_agreement_min     share of inputs where int8 and fp32 predict the same class
#   p50_latency_us_max     median int8 inference latency in microseconds, at most
heldout_accuracy_min = 0.9
heldout_change_min = -0.01
min_fleet_examples = 200
fleet_change_min = 0.0
class_recall_min = 0.7
cohort_gap_max = 0.1
int8_drop_pp_max = 1.0
int8_agreement_min = 0.98

[approval]
# "automatic": the release goes past its canary on its own; "manual": a person with the
# operator role approves it first (`edgeops pipeline approve`, or the console button).
mode = "automatic"
# A manual approval not given within this many seconds ends the run refused (nothing was
# rolled out yet: the canary starts only once the run is approved).
timeout_s = 3600.0

[canary]
# Cumulative share of the target devices (in each group) on the candidate at each step,
# increasing; the last must be 100 (the whole fleet) and at least one step comes before it.
# The devices still on the champion in each group are the control cohort.
step_weights = [20.0, 50.0, 100.0]
# How long each step is judged before the next one starts.
interval_s = 120.0
# Failed quality checks (canary vs control) before the canary is rolled back.
failure_limit = 2
# Inferences each side (canary and control of a group) needs in a check for the group to
# count; a check in which no group counts is "inconclusive": the canary pauses, never passes.
min_inferences = 200
# The canary's estimated accuracy may be at most this much below the control's.
max_accuracy_drop = 0.05
# A step that stays inconclusive this long ends the run rolled back, with that reason.
inconclusive_timeout_s = 900.0
# The rollout's health threshold: the canary aborts when this percentage of its updated
# devices fail to install or commit the release.
health_failure_threshold_pct = 10.0
'''
