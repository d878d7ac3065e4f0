"""`/api/rollouts`: start, watch, pause, resume, abort staged rollouts, and switch the
devices that hold their update staged (`switch` "command", or ahead of their window).

Reads need a viewer token, changes an operator token. Refusals are domain errors mapped
to HTTP in one place (server.api.errors): a second active rollout for the same group is
409 (RolloutConflictError), pausing a finished rollout 409 (RolloutStateError), an
unknown release or rollout 404, a rollout that selects no device 400, a bad switch window
422 (or 400 when a selected device's group has none), switching a device that is not
staged 400.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeops.switch_window import SwitchWindow
from edgeops.topics import DEVICE_ID_PATTERN
from edgeops.update_states import SwitchMode
from server.api.audit import note
from server.api.deps import OperatorDep, PublisherDep, SessionFactoryDep, ViewerDep
from server.api.labels import LABEL, clean_tags
from server.pipeline.steps import start_rollout
from server.rollouts import store
from server.rollouts.controller import ANY_GROUP, RolloutPolicy
from server.rollouts.runner import switch_now
from server.rollouts.summary import summarize
from server.rollouts.transfers import transfer_totals

__all__ = ["RolloutCreate", "RolloutDevicePublic", "RolloutPublic", "RolloutSwitch", "router"]

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"])

TARGET_PATH = r"^[A-Za-z0-9][A-Za-z0-9._+-]*(?:/[A-Za-z0-9][A-Za-z0-9._+-]*)*$"
MAX_ID = 2**31 - 1
DAY_S = 24 * 3600.0
RolloutId = Annotated[int, Path(ge=1, le=MAX_ID, description="rollout id")]
Status = Literal["running", "paused", "aborting", "completed", "aborted"]
DEFAULTS = RolloutPolicy()  # the field defaults below are RolloutPolicy's, defined once


class RolloutCreate(BaseModel):
    """A staged rollout of one release to a group (or the whole fleet)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=300, pattern=TARGET_PATH,
                        description="TUF target path of the release")
    group: str | None = Field(default=None, pattern=LABEL,
                              description="device group; null: every device")
    tags: list[str] = Field(default_factory=list, max_length=20,
                            description="a device must carry every tag")
    waves_pct: list[float] = Field(default_factory=lambda: list(DEFAULTS.waves_pct),
                                   min_length=1, max_length=20,
                                   description="cumulative % of devices per wave; 100 is added")
    soak_s: float = Field(default=DEFAULTS.soak_s, ge=0, le=7 * DAY_S)
    success_pct: float = Field(default=DEFAULTS.success_pct, gt=0, le=100)
    failure_threshold_pct: float = Field(default=DEFAULTS.failure_threshold_pct, gt=0, le=100)
    failure_min_count: int = Field(default=DEFAULTS.failure_min_count, ge=1, le=1_000_000)
    device_timeout_s: float = Field(default=DEFAULTS.device_timeout_s, ge=1, le=7 * DAY_S)
    max_in_flight: int | None = Field(default=DEFAULTS.max_in_flight, ge=1, le=1_000_000,
                                      description="devices updating at once; null: a whole wave")
    switch: SwitchMode | None = Field(
        default=None,
        description='when staged devices switch: "now", "window" (their group\'s switch '
                    'window) or "command" (POST .../switch); null: "window" if '
                    'switch_windows are given, else "now"')
    switch_windows: dict[str, str] = Field(
        default_factory=dict, max_length=100,
        description='device group -> daily window in UTC, "HH:MM-HH:MM" (may cross midnight); '
                    '"*": every other group')

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return clean_tags(value)

    @field_validator("switch_windows")
    @classmethod
    def _switch_windows(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [g for g in value if g != ANY_GROUP and re.fullmatch(LABEL, g) is None]
        if bad:
            raise ValueError(f"switch_windows keys are device groups (or \"*\"), not {bad[:5]}")
        return {group: str(SwitchWindow.parse(text)) for group, text in value.items()}

    @model_validator(mode="after")
    def _waves(self) -> RolloutCreate:
        waves = self.waves_pct
        if any(not 0 < p <= 100 for p in waves) or waves != sorted(set(waves)):
            raise ValueError("waves_pct must be strictly increasing percentages in (0, 100]")
        self.policy()  # the policy's own checks (switch and switch_windows go together)
        return self

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            waves_pct=tuple(self.waves_pct),
            soak_s=self.soak_s,
            success_pct=self.success_pct,
            failure_threshold_pct=self.failure_threshold_pct,
            failure_min_count=self.failure_min_count,
            device_timeout_s=self.device_timeout_s,
            max_in_flight=self.max_in_flight,
            switch=self.switch,
            switch_windows=dict(self.switch_windows),
        )


class RolloutSwitch(BaseModel):
    """Switch a rollout's staged devices now (all of them, or the ones named)."""

    model_config = ConfigDict(extra="forbid")

    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN.pattern)]] | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="device ids; null: every staged device of the rollout")


class RolloutSwitchPublic(BaseModel):
    rollout: RolloutPublic
    switched: list[str]


class WavePublic(BaseModel):
    index: int
    devices: int
    cumulative_devices: int
    phases: dict[str, int]
    done: int
    failed: int
    staged: int
    status: str


class RolloutPublic(BaseModel):
    id: int
    target: str
    group: str | None
    tags: list[str]
    status: str
    reason: str | None
    policy: dict[str, Any]
    current_wave: int
    wave_count: int
    devices: int
    done: int
    failed: int
    staged: int
    progress_pct: float
    phases: dict[str, int]
    waves: list[WavePublic]
    created_by: str
    created_at: str
    updated_at: str
    finished_at: float | None
    bytes_sent: int = Field(description="bytes the devices received for the target")
    bytes_full: int = Field(description="what full downloads to those devices would cost")
    transfers: dict[str, int] = Field(description="devices per how the target arrived")


class RolloutDevicePublic(BaseModel):
    device_id: str
    wave: int
    phase: str
    reason: str | None
    command_id: str | None
    sent_at: float | None
    resolved_at: float | None
    rollback_sent_at: float | None


def rollout_public(session: Any, rollout_id: int) -> RolloutPublic:
    rollout = store.get_rollout(session, rollout_id)
    totals = transfer_totals(session, [rollout_id])[rollout_id]
    summary = summarize(rollout, store.assignments(session, rollout_id), transfers=totals)
    return RolloutPublic.model_validate(summary.to_json())


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RolloutPublic]:
    """Newest first, with totals (per-wave detail is on GET /api/rollouts/{id})."""
    with session_factory() as session:
        rollouts = store.list_rollouts(session, status, limit)
        counts = store.phase_counts(session, [r.id for r in rollouts])
        totals = transfer_totals(session, [r.id for r in rollouts])
        return [
            RolloutPublic.model_validate(
                summarize(r, phase_counts=counts[r.id], transfers=totals[r.id]).to_json()
            )
            for r in rollouts
        ]


@router.post("", response_model=RolloutPublic, status_code=201)
def create_rollout(
    body: RolloutCreate, user: OperatorDep, session_factory: SessionFactoryDep, request: Request
) -> RolloutPublic:
    """Start a rollout: devices are chosen now (group, tags), in id order, and cut into
    waves; the first wave starts within a second."""
    spec = store.RolloutSpec(
        target=body.target, group=body.group, tags=tuple(body.tags), policy=body.policy()
    )
    rollout_id = start_rollout(session_factory, spec, user.name).id
    note(request, f"rollout {rollout_id} of {body.target} to "
                  f"{body.group or 'the whole fleet'}")
    with session_factory() as session:
        return rollout_public(session, rollout_id)


@router.get("/{rollout_id}", response_model=RolloutPublic)
def get_rollout(
    rollout_id: RolloutId, _user: ViewerDep, session_factory: SessionFactoryDep
) -> RolloutPublic:
    with session_factory() as session:
        return rollout_public(session, rollout_id)


@router.get("/{rollout_id}/devices", response_model=list[RolloutDevicePublic])
def list_rollout_devices(
    rollout_id: RolloutId,
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    phase: Annotated[str | None, Query(max_length=16)] = None,
) -> list[RolloutDevicePublic]:
    """Every device of the rollout in wave order, with its phase and why."""
    with session_factory() as session:
        store.get_rollout(session, rollout_id)
        return [
            RolloutDevicePublic(
                device_id=row.device_id, wave=row.wave + 1, phase=row.phase, reason=row.reason,
                command_id=row.command_id, sent_at=row.sent_at, resolved_at=row.resolved_at,
                rollback_sent_at=row.rollback_sent_at,
            )
            for row in store.assignments(session, rollout_id)
            if phase is None or row.phase == phase
        ]


def _act(what: store.Request, rollout_id: int, user: Any, session_factory: Any,
         request: Request) -> RolloutPublic:
    store.operator_request(session_factory, rollout_id, what, user.name)
    note(request, f"{what} rollout {rollout_id}")
    with session_factory() as session:
        return rollout_public(session, rollout_id)


@router.post("/{rollout_id}/pause", response_model=RolloutPublic)
def pause_rollout(rollout_id: RolloutId, user: OperatorDep,
                  session_factory: SessionFactoryDep, request: Request) -> RolloutPublic:
    """Stop starting waves and sending updates; devices already updating carry on."""
    return _act("pause", rollout_id, user, session_factory, request)


@router.post("/{rollout_id}/resume", response_model=RolloutPublic)
def resume_rollout(rollout_id: RolloutId, user: OperatorDep,
                   session_factory: SessionFactoryDep, request: Request) -> RolloutPublic:
    return _act("resume", rollout_id, user, session_factory, request)


@router.post("/{rollout_id}/abort", response_model=RolloutPublic)
def abort_rollout(rollout_id: RolloutId, user: OperatorDep,
                  session_factory: SessionFactoryDep, request: Request) -> RolloutPublic:
    """Stop, and roll back every device this rollout put on the release."""
    return _act("abort", rollout_id, user, session_factory, request)


@router.post("/{rollout_id}/switch", response_model=RolloutSwitchPublic)
def switch_rollout(rollout_id: RolloutId, user: OperatorDep, session_factory: SessionFactoryDep,
                   publisher: PublisherDep, request: Request,
                   body: RolloutSwitch | None = None) -> RolloutSwitchPublic:
    """Switch devices that hold the release staged (waiting for their window or for this):
    they smoke-test, switch and start their health window now. 503 if the broker did not
    confirm (those devices stay staged: switch again)."""
    devices = body.devices if body is not None else None
    switched = switch_now(session_factory, publisher, rollout_id, devices, user.name)
    note(request, f"switch {len(switched)} staged devices of rollout {rollout_id}")
    with session_factory() as session:
        return RolloutSwitchPublic(rollout=rollout_public(session, rollout_id), switched=switched)
