"""Scenarios as data: the TOML file that tells the laptop simulation what a run lives through.

    scenario = load_scenario("drift-recovery")     # a built-in (simulations/scenarios/*.toml)
    scenario = load_scenario(Path("mine.toml"))    # or a file; parse_scenario(text, source)
    scenario = scenario.override(devices=12)       # `--devices` / `--seed` on the command line
    report["scenario"] = scenario.to_json()        # a plain dict; Scenario.from_json reads it

A scenario is a fleet (devices, cohorts, agent processes), its traffic and feedback, the
champion trained federatedly at the start and rolled out in waves, the monitor's window, the
release policy the server runs under (none: no pipeline), a timeline of `[[events]]` (drift,
label faults, infrastructure faults, a person starting or approving a run) and the
`[[assertions]]` the run must show at the end. docs/scenarios.md documents every key.

Every problem is a ConfigError naming the source, the key path (`events[2].cohort`,
`policy.canary.step_weights`) and what was wrong, all at once, before anything starts: first
every key's own type and range, then (once those hold) the rules between keys (an event after
the end, a cohort that does not exist, overlapping outages...). The models are frozen pydantic
models (`extra="forbid"`); numbers and booleans must have their TOML types (an integer is
accepted for a number). The inline `[policy]` table is a `ReleasePolicy`
(server.pipeline.policy), so its errors and defaults are the policy file's own.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeops.errors import ConfigError
from edgeops.settings_file import read_toml
from server.pipeline.policy import ReleasePolicy, default_policy, load_policy

__all__ = [
    "BUILTIN_POLICIES",
    "DRIFT_KINDS",
    "KILL_POINTS",
    "SCENARIOS_DIR",
    "SCENARIO_SCHEMA_VERSION",
    "ApproveEvent",
    "Assertion",
    "BrokerDownEvent",
    "ChampionSettings",
    "ControlKeptAssertion",
    "DetectedWithinWindowsAssertion",
    "DriftEvent",
    "Event",
    "FleetSettings",
    "KillAgentsEvent",
    "KillServerEvent",
    "LabelFaultEvent",
    "LossyLinkEvent",
    "MonitorSettings",
    "NoHalfUpdatedAssertion",
    "NothingLostAssertion",
    "OfflineEvent",
    "PipelineEndedAssertion",
    "PipelineRunEvent",
    "PublishedAtMostAssertion",
    "RecoveredAssertion",
    "Scenario",
    "TrafficSettings",
    "TrainedOnceAssertion",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
]

SCENARIO_SCHEMA_VERSION = 1
SCENARIOS_DIR = Path(__file__).with_name("scenarios")
BUILTIN_POLICIES = ("default",)  # `policy = "default"`: examples/policies/default.toml

Seconds = Annotated[float, Field(strict=True, ge=0)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0)]
Fraction = Annotated[float, Field(strict=True, ge=0, le=1)]
PercentagePoints = Annotated[float, Field(strict=True, ge=0, le=100)]
Percent = Annotated[float, Field(strict=True, gt=0, le=100)]
Count = Annotated[StrictInt, Field(ge=0)]
PositiveCount = Annotated[StrictInt, Field(ge=1)]
Name = Annotated[StrictStr, Field(min_length=1, pattern=r"^\S+$")]

DriftKind = Literal["offset", "shift", "noise", "blur", "rotate", "out_of_range", "prior", "concept"]
DRIFT_KINDS: Mapping[str, tuple[float, float, str]] = {
    "offset": (0.0, 1.0, "added to every pixel (pixels are 0..1), clipped"),
    "shift": (0.0, 7.0, "pixels the image moves right, whole (at least 1)"),
    "noise": (0.0, 1.0, "standard deviation of Gaussian noise on every pixel"),
    "blur": (0.0, 4.0, "sigma of a Gaussian blur, in pixels"),
    "rotate": (0.0, 180.0, "degrees the image turns"),
    "out_of_range": (0.0, 1.0, "share of pixels read far outside 0..1 (a faulty sensor)"),
    "prior": (0.0, 1.0, "share of traffic drawn from classes 0-4 only (prior shift)"),
    "concept": (0.0, 1.0, "share of true labels moved to the next class (concept change)"),
}
"""Each drift kind's amount: (exclusive lower bound, inclusive upper bound, meaning)."""

KillPoint = Literal["triggered", "training", "evaluating", "gated", "packaging",
                    "packaging:published", "signed", "awaiting_approval", "canary"]
KILL_POINTS: tuple[str, ...] = get_args(KillPoint)
"""Pipeline points where `kill_server` can SIGKILL the server (server.pipeline.runner)."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetSettings(_Table):
    """The simulated devices, the cohorts (device groups) they form and how they run."""

    devices: PositiveCount = 6
    # name -> count (integers, adding up to devices) or share (numbers, adding up to 1);
    # stored as counts. Left out: one cohort "all".
    cohorts: dict[str, int] = Field(default=None, validate_default=True)
    alpha: Annotated[float, Field(strict=True, ge=0)] = 0.0  # 0: IID; else Dirichlet non-IID
    agent_processes: PositiveCount = 1

    @field_validator("cohorts", mode="before")
    @classmethod
    def _as_counts(cls, raw: Any, info: ValidationInfo) -> Any:
        devices = info.data.get("devices")
        if raw is None:
            return {"all": devices} if devices is not None else {}
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("must be a table of cohort name -> device count or share, "
                             "e.g. {north = 2, south = 4}")
        bad = [n for n in raw if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
        if bad:
            raise ValueError(f"cohort names must be words without spaces, got {bad!r}")
        values = list(raw.values())
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"each cohort needs a device count or a share, got {dict(raw)!r}")
        if devices is None:
            raise ValueError("cannot be checked without a valid fleet.devices")
        if all(isinstance(v, int) for v in values):
            return _check_counts(dict(raw), devices)
        return _shares_to_counts(dict(raw), devices)

    @field_validator("agent_processes")
    @classmethod
    def _processes_fit(cls, processes: int, info: ValidationInfo) -> int:
        devices = info.data.get("devices")
        if devices is not None and processes > devices:
            raise ValueError(f"cannot exceed fleet.devices ({devices}), got {processes}")
        return processes

    def assignment(self) -> tuple[str, ...]:
        """The cohort of device i, dealt round-robin over the cohorts in file order
        (each until its count is reached), so that canary waves reach every cohort."""
        left = dict(self.cohorts)
        order: list[str] = []
        while len(order) < self.devices:
            for name in self.cohorts:
                if left[name] > 0:
                    order.append(name)
                    left[name] -= 1
        return tuple(order)


def _check_counts(counts: dict[str, int], devices: int) -> dict[str, int]:
    if any(v < 1 for v in counts.values()):
        raise ValueError(f"every cohort needs at least one device, got {counts}")
    if sum(counts.values()) != devices:
        raise ValueError(f"counts add up to {sum(counts.values())}, but fleet.devices is {devices}")
    return counts


def _shares_to_counts(shares: dict[str, float], devices: int) -> dict[str, int]:
    """Shares (summing to 1) as device counts, by largest remainder."""
    if any(not 0 < v <= 1 for v in shares.values()):
        raise ValueError(f"shares must be in (0, 1], got {shares}")
    if not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"shares add up to {sum(shares.values()):g}, not 1")
    exact = {name: share * devices for name, share in shares.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    by_remainder = sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)
    for name in by_remainder[: devices - sum(counts.values())]:
        counts[name] += 1
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise ValueError(f"of {devices} devices, cohort {', '.join(empty)} gets none; "
                         "raise its share or fleet.devices")
    return counts


class TrafficSettings(_Table):
    """Every device's inference stream and the true labels that come back for some of it."""

    rate_hz: PositiveSeconds = 25.0  # predictions per second, per device
    feedback_share: Fraction = 1.0  # of predictions that get their true label back
    feedback_delay_s: Seconds = 0.0  # how late a label comes back
    telemetry_interval_s: PositiveSeconds = 1.0  # how often each device sends its window


class ChampionSettings(_Table):
    """The v1 model: trained federatedly at the start, then rolled out to every device."""

    rounds: PositiveCount = 3
    local_epochs: PositiveCount = 3
    # Devices whose data trains it (the first N; None: every device). A large fleet trains
    # its champion on a sample: SecAgg+ over 1,000 simulated clients is not what it shows.
    clients: PositiveCount | None = None
    waves: tuple[Percent, ...] = (50.0, 100.0)  # cumulative percent of the fleet per wave
    max_in_flight: PositiveCount | None = None  # devices updating at once (None: a whole wave)

    @field_validator("waves")
    @classmethod
    def _waves(cls, waves: tuple[float, ...]) -> tuple[float, ...]:
        shown = ", ".join(f"{w:g}" for w in waves)
        if not waves or list(waves) != sorted(set(waves)) or waves[-1] != 100:
            raise ValueError(f"must be strictly increasing and end at 100, got [{shown}]")
        return waves


class MonitorSettings(_Table):
    """The server's drift and quality monitor, in simulated (compressed) time."""

    window_s: PositiveSeconds = 3.0


# ---------------------------------------------------------------- events


class _Event(_Table):
    at_s: Seconds  # seconds since the champion runs on every device

    @property
    def ends_at_s(self) -> float | None:
        """When what the event started is over (an outage, a kill until the restart)."""
        span = getattr(self, "duration_s", None)
        span = getattr(self, "restart_after_s", None) if span is None else span
        return None if span is None or self.at_s is None else self.at_s + span


class DriftEvent(_Event):
    """The inputs (or, for `prior` and `concept`, the traffic's truth) of a cohort change."""

    kind: Literal["drift"]
    cohort: Name
    drift: DriftKind
    amount: Annotated[float, Field(strict=True)]

    @field_validator("amount")
    @classmethod
    def _amount_in_range(cls, amount: float, info: ValidationInfo) -> float:
        drift = str(info.data.get("drift"))
        if drift in DRIFT_KINDS:
            low, high, meaning = DRIFT_KINDS[drift]
            if not low < amount <= high:
                raise ValueError(f"must be in ({low:g}, {high:g}] for drift = {drift!r} "
                                 f"({meaning}), got {amount:g}")
        return amount


class LabelFaultEvent(_Event):
    """The feedback labels of a cohort go bad (shuffle: each becomes a random class)."""

    kind: Literal["label_fault"]
    cohort: Name
    fault: Literal["shuffle"] = "shuffle"


class BrokerDownEvent(_Event):
    """Mosquitto is stopped for `duration_s`, then started again on the same port."""

    kind: Literal["broker_down"]
    duration_s: PositiveSeconds


class KillAgentsEvent(_Event):
    """The agent processes holding a cohort's devices (or `count` devices) are SIGKILLed."""

    kind: Literal["kill_agents"]
    cohort: Name | None = None
    count: PositiveCount | None = None
    restart_after_s: Seconds = 1.0

    @model_validator(mode="after")
    def _one_target(self) -> KillAgentsEvent:
        if (self.cohort is None) == (self.count is None):
            raise ValueError("set exactly one of cohort and count")
        return self


class KillServerEvent(_Event):
    """The server process is SIGKILLed at `at_s` or when its pipeline run reaches a point."""

    kind: Literal["kill_server"]
    at_s: Seconds | None = None  # type: ignore[assignment]
    at_pipeline_state: KillPoint | None = None
    restart_after_s: Seconds = 1.0

    @model_validator(mode="after")
    def _one_moment(self) -> KillServerEvent:
        if (self.at_s is None) == (self.at_pipeline_state is None):
            raise ValueError("set exactly one of at_s and at_pipeline_state")
        return self


class OfflineEvent(_Event):
    """Devices drop off the network (`devices` of them, or a cohort) for `duration_s`."""

    kind: Literal["offline"]
    devices: PositiveCount | None = None
    cohort: Name | None = None
    duration_s: PositiveSeconds

    @model_validator(mode="after")
    def _one_target(self) -> OfflineEvent:
        if (self.cohort is None) == (self.devices is None):
            raise ValueError("set exactly one of devices and cohort")
        return self


class LossyLinkEvent(_Event):
    """A cohort's link to the broker drops `loss_pct` percent of its packets."""

    kind: Literal["lossy_link"]
    cohort: Name
    loss_pct: Percent
    duration_s: PositiveSeconds


class PipelineRunEvent(_Event):
    """A person starts a pipeline run (`edgeops pipeline run`)."""

    kind: Literal["pipeline_run"]


class ApproveEvent(_Event):
    """A person approves the pipeline run waiting for approval (manual approval policy)."""

    kind: Literal["approve"]


Event = Annotated[
    DriftEvent | LabelFaultEvent | BrokerDownEvent | KillAgentsEvent | KillServerEvent
    | OfflineEvent | LossyLinkEvent | PipelineRunEvent | ApproveEvent,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- assertions


class _Assertion(_Table):
    name: Annotated[StrictStr, Field(min_length=1)]  # default: kind, and cohort or status

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "name" not in data:
            about = data.get("cohort", data.get("status"))
            suffix = f" {about}" if isinstance(about, str) else ""
            return {**data, "name": f"{data.get('kind')}{suffix}"}
        return data


class DetectedWithinWindowsAssertion(_Assertion):
    """The monitor reported the cohort's drift within `windows` monitor windows of it."""

    kind: Literal["detected_within_windows"]
    cohort: Name
    windows: PositiveCount


class RecoveredAssertion(_Assertion):
    """At the end the cohort's held-out accuracy is back: at least a fraction, or within
    `within_pp_of_before` percentage points of its accuracy before the first event."""

    kind: Literal["recovered"]
    cohort: Name
    accuracy_at_least: Fraction | None = None
    within_pp_of_before: PercentagePoints | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> RecoveredAssertion:
        if (self.accuracy_at_least is None) == (self.within_pp_of_before is None):
            raise ValueError("set exactly one of accuracy_at_least and within_pp_of_before")
        return self


class ControlKeptAssertion(_Assertion):
    """The cohorts that never drifted lost at most `max_loss_pp` points of accuracy."""

    kind: Literal["control_kept"]
    max_loss_pp: PercentagePoints


class PipelineEndedAssertion(_Assertion):
    """The (last) pipeline run ended with this status."""

    kind: Literal["pipeline_ended"]
    status: Literal["promoted", "rolled_back", "refused"]


class NothingLostAssertion(_Assertion):
    """Every telemetry message the agents sent was stored by the server, once."""

    kind: Literal["nothing_lost"]


class NoHalfUpdatedAssertion(_Assertion):
    """Every device ends settled on one whole version (none mid-update, none between slots)."""

    kind: Literal["no_half_updated"]


class TrainedOnceAssertion(_Assertion):
    """The pipeline run recorded exactly one finished training run (none repeated)."""

    kind: Literal["trained_once"]


class PublishedAtMostAssertion(_Assertion):
    """At most `count` releases of the model were published, the champion included."""

    kind: Literal["published_at_most"]
    count: PositiveCount


Assertion = Annotated[
    DetectedWithinWindowsAssertion | RecoveredAssertion | ControlKeptAssertion
    | PipelineEndedAssertion | NothingLostAssertion | NoHalfUpdatedAssertion
    | TrainedOnceAssertion | PublishedAtMostAssertion,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- the scenario


class _Problems(ValueError):
    """The rules between keys that a scenario breaks, each `key.path: reason`."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class Scenario(_Table):
    """A validated scenario: what the simulation runs and what it must show."""

    name: Name
    description: StrictStr = ""
    duration_s: PositiveSeconds  # the end, on the events' clock
    seed: Count = 0
    task: Literal["digits"] = "digits"
    fleet: FleetSettings = FleetSettings()
    traffic: TrafficSettings = TrafficSettings()
    champion: ChampionSettings = ChampionSettings()
    monitor: MonitorSettings = MonitorSettings()
    policy: ReleasePolicy | None = None  # None: no pipeline runs
    events: tuple[Event, ...] = ()
    assertions: tuple[Assertion, ...] = ()

    @field_validator("policy", mode="before")
    @classmethod
    def _resolve_policy(cls, raw: Any, info: ValidationInfo) -> Any:
        if isinstance(raw, Mapping):
            return {"model": info.data.get("task", "digits"), **raw}
        if not isinstance(raw, str):
            return raw
        if raw in BUILTIN_POLICIES:
            return default_policy()
        base = (info.context or {}).get("base_dir") or Path.cwd()
        try:
            return load_policy(Path(base) / raw)
        except ConfigError as err:
            raise ValueError(f"a policy name ({', '.join(BUILTIN_POLICIES)}), a policy file "
                             f"or a [policy] table; {err}") from err

    @model_validator(mode="after")
    def _rules_between_keys(self) -> Scenario:
        problems = _event_problems(self) + _assertion_problems(self) + _policy_problems(self)
        if problems:
            raise _Problems(problems)
        return self

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict with its schema version (for report.json)."""
        return {"schema_version": SCENARIO_SCHEMA_VERSION, **self.model_dump(mode="json")}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], source: str = "stored scenario JSON") -> Scenario:
        """The scenario `to_json` wrote; ConfigError for another schema version or bad data."""
        data = dict(raw)
        version = data.pop("schema_version", None)
        if version != SCENARIO_SCHEMA_VERSION:
            raise ConfigError(f"{source}: schema_version must be {SCENARIO_SCHEMA_VERSION}, "
                              f"got {version!r}")
        return _validate(data, source, None)

    def override(self, *, devices: int | None = None, seed: int | None = None) -> Scenario:
        """This scenario with another fleet size (cohorts keep their shares, agent processes
        at most one per device) or seed, checked again: ConfigError if an event or an
        assertion no longer fits."""
        data = self.to_json()
        changes = []
        if devices is not None:
            changes.append(f"--devices {devices}")
            fleet = data["fleet"]
            fleet["cohorts"] = {n: c / fleet["devices"] for n, c in fleet["cohorts"].items()}
            fleet["devices"] = devices
            fleet["agent_processes"] = min(fleet["agent_processes"], devices)
        if seed is not None:
            changes.append(f"--seed {seed}")
            data["seed"] = seed
        return Scenario.from_json(data, f"scenario {self.name} with {' '.join(changes)}")

    def policy_toml(self) -> str:
        """The policy as a TOML release policy file (for the server's home); '' without one."""
        return "" if self.policy is None else _policy_as_toml(self.policy)


# ---------------------------------------------------------------- rules between keys


def _event_problems(s: Scenario) -> list[str]:
    problems: list[str] = []
    cohorts = s.fleet.cohorts
    windows: list[tuple[str, str, str, float, float]] = []  # kind, target, where, start, end
    for i, event in enumerate(s.events):
        where = f"events[{i}]"
        if event.at_s is not None and event.at_s > s.duration_s:
            problems.append(f"{where}.at_s: {event.at_s:g} s is after the end "
                            f"(duration_s = {s.duration_s:g})")
        end = event.ends_at_s
        if end is not None and event.at_s is not None and end > s.duration_s >= event.at_s:
            problems.append(f"{where}: {event.kind} lasts until {end:g} s, after the end "
                            f"(duration_s = {s.duration_s:g})")
        cohort = getattr(event, "cohort", None)
        if cohort is not None and cohort not in cohorts:
            problems.append(f"{where}.cohort: no cohort {cohort!r} in fleet.cohorts "
                            f"({', '.join(cohorts)})")
        for key in ("count", "devices"):
            number = getattr(event, key, None)
            if isinstance(number, int) and number > s.fleet.devices:
                problems.append(f"{where}.{key}: {number} devices, but the fleet has "
                                f"{s.fleet.devices}")
        if isinstance(event, KillAgentsEvent) and s.fleet.agent_processes < 2:
            problems.append(f"{where}: kill_agents needs fleet.agent_processes >= 2 "
                            "(with one process every device would die)")
        if isinstance(event, PipelineRunEvent | ApproveEvent) or (
            isinstance(event, KillServerEvent) and event.at_pipeline_state is not None
        ):
            if s.policy is None:
                problems.append(f"{where}: {event.kind} needs a pipeline, but the scenario "
                                "has no policy")
            elif isinstance(event, PipelineRunEvent) and not s.policy.triggers.manual:
                problems.append(f"{where}: pipeline_run, but policy.triggers.manual is false "
                                "(a person may not start a run)")
            elif isinstance(event, ApproveEvent) and s.policy.approval.mode != "manual":
                problems.append(f"{where}: approve, but policy.approval.mode is "
                                f"{s.policy.approval.mode!r} (nothing waits for a person)")
        if end is not None and event.at_s is not None:
            on = "" if isinstance(event, BrokerDownEvent | KillServerEvent) else (
                f"cohort {cohort}" if cohort else "fleet")
            windows.append((event.kind, on, where, event.at_s, end))
    problems += _overlaps(windows)
    points = [e.at_pipeline_state for e in s.events
              if isinstance(e, KillServerEvent) and e.at_pipeline_state is not None]
    repeated = sorted({p for p in points if points.count(p) > 1})
    if repeated:
        problems.append(f"events: kill_server at_pipeline_state {', '.join(repeated)} "
                        "listed more than once (a run passes each point once)")
    return problems


def _overlaps(windows: list[tuple[str, str, str, float, float]]) -> list[str]:
    """One problem per pair of outages of the same kind on the same target that overlap."""
    problems = []
    for a, (kind, on, where_a, start_a, end_a) in enumerate(windows):
        for kind_b, on_b, where_b, start_b, end_b in windows[a + 1:]:
            target = f" on the same {on}" if on else ""
            if (kind, on) == (kind_b, on_b) and start_a < end_b and start_b < end_a:
                problems.append(f"{where_b}: {kind} from {start_b:g} to {end_b:g} s overlaps "
                                f"{where_a} ({start_a:g} to {end_a:g} s){target}")
    return problems


def _assertion_problems(s: Scenario) -> list[str]:
    problems: list[str] = []
    drifted = {e.cohort for e in s.events if isinstance(e, DriftEvent)}
    faulted = drifted | {e.cohort for e in s.events if isinstance(e, LabelFaultEvent)}
    names = [a.name for a in s.assertions]
    for i, check in enumerate(s.assertions):
        where = f"assertions[{i}]"
        cohort = getattr(check, "cohort", None)
        if cohort is not None and cohort not in s.fleet.cohorts:
            problems.append(f"{where}.cohort: no cohort {cohort!r} in fleet.cohorts "
                            f"({', '.join(s.fleet.cohorts)})")
        elif isinstance(check, DetectedWithinWindowsAssertion) and cohort not in drifted:
            problems.append(f"{where}.cohort: no drift event on {cohort!r} to detect")
        elif isinstance(check, RecoveredAssertion) and cohort not in faulted:
            problems.append(f"{where}.cohort: no drift or label_fault on {cohort!r} "
                            "to recover from")
        if isinstance(check, ControlKeptAssertion) and not (
            drifted and set(s.fleet.cohorts) - drifted
        ):
            problems.append(f"{where}: control_kept needs a drifted cohort and one that "
                            "never drifts")
        needs_pipeline = RecoveredAssertion | PipelineEndedAssertion | TrainedOnceAssertion
        if isinstance(check, needs_pipeline) and s.policy is None:
            problems.append(f"{where}: {check.kind} needs a pipeline, but the scenario has "
                            "no policy")
        if names.count(check.name) > 1 and names.index(check.name) != i:
            problems.append(f"{where}.name: {check.name!r} is already the name of "
                            f"assertions[{names.index(check.name)}]")
    return problems


def _policy_problems(s: Scenario) -> list[str]:
    if s.policy is None:
        return []
    problems = []
    if s.policy.model != s.task:
        problems.append(f"policy.model: must be the scenario's task {s.task!r}, "
                        f"got {s.policy.model!r}")
    small = {n: c for n, c in s.fleet.cohorts.items() if c < 2}
    if small:
        problems.append(f"fleet.cohorts: with a policy every cohort needs at least 2 devices "
                        f"(a canary and a control), got {small}")
    need = s.policy.retraining.min_devices
    if s.policy.retraining.participants == "fleet" and s.fleet.devices < need:
        problems.append(f"policy.retraining.min_devices: {need} devices needed, the fleet "
                        f"has {s.fleet.devices}")
    if s.policy.retraining.participants == "drifted_cohort":
        for cohort in sorted({e.cohort for e in s.events if isinstance(e, DriftEvent)}):
            if s.fleet.cohorts.get(cohort, need) < need:
                problems.append(f"policy.retraining.min_devices: {need} devices needed, "
                                f"cohort {cohort} has {s.fleet.cohorts[cohort]} "
                                "(participants = drifted_cohort)")
    return problems


# ---------------------------------------------------------------- errors


def _tagged(annotation: Any) -> dict[str, type[BaseModel]]:
    """kind -> model, for a discriminated union of tables (events, assertions)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    tags: dict[str, type[BaseModel]] = {}
    for member in get_args(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel) and "kind" in member.model_fields:
            for tag in get_args(member.model_fields["kind"].annotation):
                tags[tag] = member
    return tags


def _model_of(annotation: Any) -> Any:
    """The table model inside `X | None`, or the annotation itself."""
    members = [a for a in get_args(annotation) if a is not type(None)]
    if members and all(isinstance(a, type) and issubclass(a, BaseModel) for a in members):
        return members[0] if len(members) == 1 else annotation
    return annotation


def _locate(loc: Sequence[int | str]) -> tuple[str, type[BaseModel] | None, Any]:
    """(`events[2].cohort`, the model of the table holding the last key, the type at the
    location) for a pydantic loc, leaving out the union tags pydantic inserts
    (`events.2.drift.cohort`)."""
    shown = ""
    cursor: Any = Scenario
    holder: type[BaseModel] | None = None
    for part in loc:
        tags = _tagged(cursor)
        if isinstance(part, str) and part in tags:
            cursor = tags[part]
            continue
        if isinstance(part, int):
            shown += f"[{part}]"
            args = get_args(cursor)
            cursor = args[0] if args else None
            continue
        shown += f".{part}" if shown else str(part)
        if isinstance(cursor, type) and issubclass(cursor, BaseModel):
            holder = cursor
            field = cursor.model_fields.get(part)
            cursor = _model_of(field.annotation) if field is not None else None
        else:
            holder, cursor = None, None
    return shown, holder, cursor


def _describe(error: Mapping[str, Any]) -> list[str]:
    """Readable lines for one pydantic error: `key.path: what was wrong (got ...)`."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Problems):
        return cause.problems
    where, holder, at = _locate(tuple(error["loc"]))
    where = where or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = sorted(holder.model_fields) if holder is not None else []
        hint = f"; known keys here: {', '.join(known)}" if known else ""
        return [f"{where}: unknown key{hint}"]
    if kind == "missing":
        return [f"{where}: required key is missing"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ", ".join(_tagged(at))
        got = (error.get("ctx") or {}).get("tag")
        if got is None:
            return [f"{where}.kind: required key is missing (one of {expected})"]
        return [f"{where}.kind: must be one of {expected} (got {got!r})"]
    if kind == "string_pattern_mismatch":
        return [f"{where}: must be one word without spaces (got {error.get('input')!r})"]
    if kind in ("model_type", "model_attributes_type"):
        return [f"{where}: must be a table, got {error.get('input')!r}"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return [f"{where}: {message}"]
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return [f"{where}: {message} (got {shown})"]


def _validate(data: Mapping[str, Any], source: str, base_dir: Path | None) -> Scenario:
    try:
        return Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        lines = [line for e in err.errors() for line in _describe(e)]
        raise ConfigError(f"{source} is not a valid scenario:\n  " + "\n  ".join(lines)) from err


# ---------------------------------------------------------------- loading


def builtin_scenarios() -> tuple[str, ...]:
    """The names `load_scenario` accepts without a path (simulations/scenarios/*.toml)."""
    return tuple(sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml")))


def parse_scenario(text: str, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """The scenario in the TOML `text`; `source` names it in errors, `base_dir` is where a
    `policy = "file.toml"` is looked for (default: the current folder)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from err
    return _validate(table, source, base_dir)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name (`drift-recovery`) or the scenario file at a path (a Path,
    or text with a `/` or ending in `.toml`); ConfigError if there is none or it is invalid."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name_or_path)
        missing = f"no scenario file at {path}"
    else:
        path = SCENARIOS_DIR / f"{text}.toml"
        missing = (f"no built-in scenario {text!r} (built-ins: {', '.join(builtin_scenarios())}; "
                   "a file needs a path such as ./mine.toml)")
    table = read_toml(path, missing=missing)
    return _validate(table, str(path), path.parent)


# ---------------------------------------------------------------- policy as TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} as TOML")


def _policy_as_toml(policy: ReleasePolicy) -> str:
    """A release policy file that `parse_policy` reads back as `policy` (a gate not set is
    left out, so it stays unchecked)."""
    data = policy.model_dump(mode="json")
    lines = [f"{key} = {_toml_value(v)}" for key, v in data.items() if not isinstance(v, dict)]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
