"""Rollouts in the database: create, load, save a decision, operator requests.

Functions over a SQLAlchemy session; the caller owns the transaction. A rollout row carries
a `revision`: `save_decision` and `request` update it only if nobody changed it since it was
loaded (optimistic concurrency between the runner and the API), so an operator's pause is
never overwritten by a tick computed from the state before it; `operator_request` reads
again and retries the operator's side when a tick came between.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import ConfigError, NotFoundError
from server.db.tables import Device, DeviceLabel, Rollout, RolloutDevice
from server.registry.registry import check_not_withdrawn
from server.rollouts.controller import (
    ACTIVE_STATUSES,
    Decision,
    DeviceAssignment,
    DeviceObservation,
    Request,
    RolloutPolicy,
    RolloutState,
    apply_request,
    assign_waves,
    switch_staged,
)
from server.rollouts.errors import RolloutChangedError, RolloutConflictError

__all__ = [
    "FLEET_SCOPE",
    "RolloutSpec",
    "bump_revision",
    "create_rollout",
    "get_rollout",
    "list_rollouts",
    "load_state",
    "observe_devices",
    "operator_request",
    "release_waves",
    "request",
    "save_decision",
    "select_devices",
    "switch_devices",
    "unswitch_devices",
]

FLEET_SCOPE = "*"  # the scope of a rollout to the whole fleet


@dataclass(frozen=True)
class RolloutSpec:
    target: str
    group: str | None = None  # None: every device
    tags: tuple[str, ...] = ()  # a device must carry all of them
    policy: RolloutPolicy = RolloutPolicy()
    # Hold after this many waves until `release_waves` lets more start (None: no hold).
    released_waves: int | None = None
    # The selected devices in the order waves take them (None: device id order); every
    # device must match group and tags.
    order: tuple[str, ...] | None = None


_NAIVE_EPOCH = datetime(1970, 1, 1)  # stored times are naive UTC


def _epoch(moment: datetime | None) -> float | None:
    """Epoch seconds of a stored time (naive: UTC). Called for every device each tick:
    the subtraction is ~10x cheaper than `replace(tzinfo=UTC).timestamp()`, same value."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return (moment - _NAIVE_EPOCH).total_seconds()
    return moment.timestamp()


def select_devices(session: Session, group: str | None, tags: Sequence[str]) -> list[str]:
    """Device ids matching `group` (devices without labels are in "default") and carrying
    every tag, in id order (the order waves take them in)."""
    return list(_select_groups(session, group, tags))


def _select_groups(session: Session, group: str | None, tags: Sequence[str]) -> dict[str, str]:
    """{device id: its group} of the devices `select_devices` selects, in id order."""
    rows = session.execute(
        select(Device.device_id, DeviceLabel.group_name, DeviceLabel.tags)
        .outerjoin(DeviceLabel, DeviceLabel.device_id == Device.device_id)
        .order_by(Device.device_id)
    )
    wanted = set(tags)
    chosen: dict[str, str] = {}
    for device_id, group_name, device_tags in rows:
        if group is not None and (group_name or "default") != group:
            continue
        if wanted and not wanted <= set(device_tags or ()):
            continue
        chosen[device_id] = group_name or "default"
    return chosen


def _check_windows(policy: RolloutPolicy, groups: Mapping[str, str]) -> None:
    """ConfigError if a selected device's group has no switch window (and there is no "*"):
    it would never switch by itself."""
    if policy.switch != "window":
        return
    missing = sorted({g for g in groups.values() if policy.window_for(g) is None})
    if missing:
        raise ConfigError(
            f"switch_windows has no window for group(s) {', '.join(missing)} of the selected "
            f'devices: add them, or a "*" window for every other group'
        )


def _active_conflict(session: Session, scope: str) -> Rollout | None:
    stmt = select(Rollout).where(Rollout.active_scope.is_not(None))
    if scope != FLEET_SCOPE:
        stmt = stmt.where(Rollout.active_scope.in_([scope, FLEET_SCOPE]))
    return session.scalars(stmt.order_by(Rollout.id).limit(1)).first()


def create_rollout(session: Session, spec: RolloutSpec, actor: str, now: float) -> Rollout:
    """Create a running rollout; its first wave starts on the runner's next tick.

    NotFoundError if the target is not a release, ReleaseWithdrawnError if it was withdrawn;
    ConfigError if it selects no device;
    RolloutConflictError if a rollout is active for the same group (or the whole fleet).
    """
    check_not_withdrawn(session, spec.target)  # NotFoundError / ReleaseWithdrawnError
    scope = spec.group if spec.group is not None else FLEET_SCOPE
    conflict = _active_conflict(session, scope)
    if conflict is not None:
        raise RolloutConflictError(_conflict_message(conflict))
    groups = _select_groups(session, spec.group, spec.tags)
    _check_windows(spec.policy, groups)
    device_ids = list(groups)
    if spec.released_waves is not None and spec.released_waves < 1:
        raise ConfigError(f"released_waves must be at least 1, got {spec.released_waves}")
    if spec.order is not None:
        unknown = sorted(set(spec.order) - set(device_ids))
        if unknown or len(set(spec.order)) != len(spec.order):
            raise ConfigError(f"the rollout's device order names devices it does not select "
                              f"or repeats them: {unknown or 'duplicates'}")
        device_ids = [*spec.order, *(d for d in device_ids if d not in set(spec.order))]
    if not device_ids:
        where = f"group {spec.group!r}" if spec.group is not None else "the fleet"
        tags = f" with tags {sorted(spec.tags)}" if spec.tags else ""
        raise ConfigError(f"no device in {where}{tags}: nothing to roll out to")
    stamp = datetime.fromtimestamp(now, UTC)
    rollout = Rollout(
        target=spec.target,
        group_name=spec.group,
        tags=sorted(spec.tags),
        policy=spec.policy.to_json(),
        released_waves=spec.released_waves,
        status="running",
        active_scope=scope,
        current_wave=0,
        revision=0,
        created_by=actor,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(rollout)
    try:
        session.flush()
    except IntegrityError as err:  # another request won the race for this scope
        session.rollback()
        raise RolloutConflictError(
            f"another rollout became active for {scope!r} at the same time; try again"
        ) from err
    session.execute(
        RolloutDevice.__table__.insert(),  # type: ignore[attr-defined]
        [
            {"rollout_id": rollout.id, "device_id": a.device_id, "position": position,
             "wave": a.wave, "phase": a.phase}
            for position, a in enumerate(assign_waves(device_ids, spec.policy.waves_pct))
        ],
    )
    return rollout


def _conflict_message(conflict: Rollout) -> str:
    scope = "the whole fleet" if conflict.group_name is None else f"group {conflict.group_name!r}"
    return (
        f"rollout {conflict.id} of {conflict.target} is already {conflict.status} for {scope}; "
        f"pause is not enough: abort it or wait until it finishes"
    )


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return rollout


def list_rollouts(session: Session, status: str | None = None, limit: int = 100) -> list[Rollout]:
    stmt = select(Rollout).order_by(Rollout.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Rollout.status == status)
    return list(session.scalars(stmt))


def assignments(session: Session, rollout_id: int) -> list[RolloutDevice]:
    return list(
        session.scalars(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.position)
        )
    )


def phase_counts(session: Session, rollout_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """{rollout id: {phase: devices}} in one query."""
    ids = list(rollout_ids)
    result: dict[int, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return result
    rows = session.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.phase, func.count())
        .where(RolloutDevice.rollout_id.in_(ids))
        .group_by(RolloutDevice.rollout_id, RolloutDevice.phase)
    )
    for rollout_id, phase, count in rows:
        result[rollout_id][phase] = count
    return result


def load_state(session: Session, rollout: Rollout, *, with_devices: bool = True) -> RolloutState:
    devices = _load_assignments(session, rollout.id) if with_devices else {}
    return RolloutState(
        id=rollout.id,
        target=rollout.target,
        status=rollout.status,  # type: ignore[arg-type]
        policy=RolloutPolicy.from_json(rollout.policy),
        devices=devices,
        current_wave=rollout.current_wave,
        wave_started_at=rollout.wave_started_at,
        soak_started_at=rollout.soak_started_at,
        reason=rollout.reason,
        finished_at=rollout.finished_at,
        released_waves=rollout.released_waves,
    )


def _load_assignments(session: Session, rollout_id: int) -> dict[str, DeviceAssignment]:
    """A rollout's assignments in position order, read as plain rows: a tick reads every
    one of them, and ORM objects cost several times the rows (10,000 devices: ~0.1 s).
    The columns are selected in `DeviceAssignment`'s field order."""
    rows = session.execute(
        select(RolloutDevice.device_id, RolloutDevice.wave, RolloutDevice.phase,
               RolloutDevice.command_id, RolloutDevice.sent_at, RolloutDevice.resolved_at,
               RolloutDevice.rollback_command_id, RolloutDevice.rollback_sent_at,
               RolloutDevice.reason)
        .where(RolloutDevice.rollout_id == rollout_id)
        .order_by(RolloutDevice.position)
    )
    return {row[0]: DeviceAssignment(*row) for row in rows}  # type: ignore[arg-type]


def observe_devices(session: Session) -> dict[str, DeviceObservation]:
    """Every device's last reported status, as the controller sees it."""
    rows = session.execute(
        select(Device.device_id, Device.online, Device.state, Device.release, Device.target,
               Device.reason, Device.last_status_at, DeviceLabel.group_name)
        .outerjoin(DeviceLabel, DeviceLabel.device_id == Device.device_id)
    )
    return {
        device_id: DeviceObservation(
            online=bool(online), state=state, release=release, target=target, reason=reason,
            status_at=_epoch(status_at), group=group_name,
        )
        for device_id, online, state, release, target, reason, status_at, group_name in rows
    }


def _write_rollout(session: Session, state: RolloutState, revision: int, now: float) -> bool:
    values = {
        "status": state.status,
        "current_wave": state.current_wave,
        "wave_started_at": state.wave_started_at,
        "soak_started_at": state.soak_started_at,
        "reason": state.reason,
        "finished_at": state.finished_at,
        "revision": revision + 1,
        "updated_at": datetime.fromtimestamp(now, UTC),
    }
    if state.status not in ACTIVE_STATUSES:
        values["active_scope"] = None
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == state.id, Rollout.revision == revision)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def save_decision(session: Session, decision: Decision, revision: int, now: float) -> bool:
    """Persist `decision` for a rollout loaded at `revision`; False (and nothing written)
    if the rollout changed since. The caller commits before publishing any command."""
    if not _write_rollout(session, decision.rollout, revision, now):
        return False
    write_assignments(session, decision.rollout.id, decision.changed)
    return True


def bump_revision(session: Session, rollout_id: int) -> None:
    """Mark a rollout changed (a write of its assignments outside `save_decision`): a tick
    or request computed from the state before it is refused, and a runner's kept state
    is read again."""
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id)
        .values(revision=Rollout.revision + 1)
        .execution_options(synchronize_session=False)
    )


def write_assignments(
    session: Session, rollout_id: int, changed: Mapping[str, DeviceAssignment]
) -> None:
    if not changed:
        return
    session.execute(
        update(RolloutDevice.__table__)  # type: ignore[arg-type]
        .where(
            RolloutDevice.__table__.c.rollout_id == rollout_id,
            RolloutDevice.__table__.c.device_id == bindparam("b_device_id"),
        )
        .values(
            phase=bindparam("b_phase"),
            command_id=bindparam("b_command_id"),
            sent_at=bindparam("b_sent_at"),
            resolved_at=bindparam("b_resolved_at"),
            rollback_command_id=bindparam("b_rollback_command_id"),
            rollback_sent_at=bindparam("b_rollback_sent_at"),
            reason=bindparam("b_reason"),
        ),
        [
            {
                "b_device_id": a.device_id,
                "b_phase": a.phase,
                "b_command_id": a.command_id,
                "b_sent_at": a.sent_at,
                "b_resolved_at": a.resolved_at,
                "b_rollback_command_id": a.rollback_command_id,
                "b_rollback_sent_at": a.rollback_sent_at,
                "b_reason": a.reason,
            }
            for a in changed.values()
        ],
    )


def release_waves(session: Session, rollout_id: int, count: int, now: float) -> None:
    """Let a held rollout start its first `count` waves (never fewer than already released;
    a rollout without a hold is left alone)."""
    if count < 1:
        raise ConfigError(f"a rollout releases at least 1 wave, not {count}")
    rollout = get_rollout(session, rollout_id)
    if rollout.released_waves is None or count <= rollout.released_waves:
        return
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.revision == rollout.revision)
        .values(released_waves=count, revision=rollout.revision + 1,
                updated_at=datetime.fromtimestamp(now, UTC))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RolloutChangedError(f"rollout {rollout_id} changed meanwhile; try again")
    session.expire(rollout)


def switch_devices(
    session_factory: sessionmaker,
    rollout_id: int,
    device_ids: Sequence[str] | None,
    actor: str,
    now: float | None = None,
) -> Decision:
    """`controller.switch_staged`, committed before the caller publishes its command (read
    again and retried when a tick came between). The decision's command lists the devices."""
    for attempt in range(1, 6):
        moment = time.time() if now is None else now
        try:
            with session_factory.begin() as session:
                rollout = get_rollout(session, rollout_id)
                decision = switch_staged(load_state(session, rollout), device_ids, actor,
                                         moment)
                if decision.changed and not save_decision(session, decision, rollout.revision,
                                                          moment):
                    raise RolloutChangedError(f"rollout {rollout_id} changed meanwhile; try again")
            return decision
        except RolloutChangedError:
            if attempt == 5:
                raise
    raise AssertionError("unreachable")


def unswitch_devices(session: Session, rollout_id: int, device_ids: Sequence[str],
                     reason: str) -> None:
    """Put devices whose switch command the broker did not confirm back to `staged`."""
    state = load_state(session, get_rollout(session, rollout_id))
    write_assignments(session, rollout_id, {
        d: replace(state.devices[d], phase="staged", reason=reason)
        for d in device_ids
        if d in state.devices and state.devices[d].phase == "sent"
    })
    bump_revision(session, rollout_id)


def request(session: Session, rollout_id: int, what: Request, actor: str,
            now: float | None = None) -> Rollout:
    """Pause, resume or abort; RolloutStateError if the status forbids it."""
    now = time.time() if now is None else now
    rollout = get_rollout(session, rollout_id)
    state = load_state(session, rollout, with_devices=False)
    new_state = apply_request(state, what, actor, now)
    if not _write_rollout(session, new_state, rollout.revision, now):
        raise RolloutChangedError(f"rollout {rollout_id} changed meanwhile; try again")
    session.expire(rollout)
    return get_rollout(session, rollout_id)


def operator_request(session_factory: sessionmaker, rollout_id: int, what: Request,
                     actor: str, attempts: int = 5) -> None:
    """`request` in its own transaction, read again and retried when the rollout changed
    between reading and writing it: the runner ticks a rollout while an operator acts, and
    the operator's abort still holds for the state the tick left (or is refused by it)."""
    for attempt in range(1, attempts + 1):
        try:
            with session_factory.begin() as session:
                request(session, rollout_id, what, actor)
            return
        except RolloutChangedError:
            if attempt == attempts:
                raise
