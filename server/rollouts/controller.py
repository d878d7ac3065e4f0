"""The rollout controller: a pure state machine over a rollout and what devices report.

    plan_waves(device_count, waves_pct) -> cumulative device counts per wave
    decide(rollout, observations, now) -> Decision(rollout, changed devices, commands, events)
    apply_request(rollout, request, actor, now) -> RolloutState   (pause / resume / abort)

No I/O, no clock, no randomness: the shell (server.rollouts.runner) loads the state and the
device observations, calls `decide`, persists the result *before* it publishes the commands
the decision asks for, and ticks again.

Rollout statuses (the transition table, `TRANSITIONS`):

    running ──pause──► paused ──resume──► running
    running ──every wave passed, no device left to catch up──► completed
    (a rollout with `released_waves` set holds after that many waves, soaked, until the
    gate releases the next one: `release_waves`)
    running | paused ──abort (operator) or failures over threshold──► aborting
    aborting ──every updated device rolled back (or given up on)──► aborted

Device phases within a rollout:

    queued ─(its wave starts, and fewer than `max_in_flight` devices are sent)─►
           sent | waiting (offline) | already (runs the target)
    waiting ─(comes online while running)─► sent ; ─(never, by the end)─► missed
    sent ─► succeeded (reports the target committed) | failed (update_failed/rolled_back for
           the target) | timed_out (no verdict within `device_timeout_s`)
    sent ─(policy `switch` "window"/"command", reports the target staged)─► staged: it
           waits for its window or the operator's `switch_staged`; no device timeout while
           it reports staged (only after `device_timeout_s` offline), takes no room in
           `max_in_flight`, holds its wave ─(reports switching on)─► sent, timed again
    succeeded ─(later reports a rollback of the target)─► failed
    aborting: queued/waiting ─► skipped ; succeeded | staged ─► rollback_sent ─► rolled_back
              (or rollback_failed when it still runs the target after `device_timeout_s`);
              a rollback cancels an update staged and waiting on the device
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from edgeops.errors import ConfigError
from edgeops.update_states import BUSY_STATES, COMMITTED_STATES, FAILED_UPDATE_STATES, SwitchMode
from server.rollouts.errors import RolloutStateError
from server.rollouts.policy import ANY_GROUP, RolloutPolicy

__all__ = [
    "ACTIVE_STATUSES",
    "COMMITTED_STATES",
    "CommandAction",
    "Decision",
    "DeviceAssignment",
    "DeviceObservation",
    "FAILED_STATES",
    "Phase",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStatus",
    "REQUESTED_STATUS",
    "TRANSITIONS",
    "ANY_GROUP",
    "apply_request",
    "decide",
    "plan_waves",
    "switch_staged",
]

RolloutStatus = Literal["running", "paused", "aborting", "completed", "aborted"]
Phase = Literal[
    "queued",
    "waiting",
    "already",
    "sent",
    "staged",
    "succeeded",
    "failed",
    "timed_out",
    "missed",
    "skipped",
    "rollback_sent",
    "rolled_back",
    "rollback_failed",
]
Request = Literal["pause", "resume", "abort"]
# The status each operator request moves a rollout to (from where: `TRANSITIONS`).
REQUESTED_STATUS: Mapping[Request, RolloutStatus] = {
    "pause": "paused",
    "resume": "running",
    "abort": "aborting",
}

ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "paused", "aborting"})
# Every status change `decide` and `apply_request` make goes through `_move`, which
# refuses a move this table does not list.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "running": frozenset({"paused", "aborting", "completed"}),
    "paused": frozenset({"running", "aborting"}),
    "aborting": frozenset({"aborted"}),
    "completed": frozenset(),
    "aborted": frozenset(),
}
# Device states (edgeops.update_states): committed = runs the target, health window over.
FAILED_STATES: frozenset[str] = FAILED_UPDATE_STATES
UPDATED_PHASES: frozenset[str] = frozenset({"sent", "staged", "succeeded", "failed", "timed_out"})


@dataclass(frozen=True, slots=True)
class DeviceObservation:
    """What the fleet inventory says about one device (times are epoch seconds)."""

    online: bool
    state: str | None = None
    release: str | None = None
    target: str | None = None
    reason: str | None = None
    status_at: float | None = None
    group: str | None = None  # its label's group (None: "default")


@dataclass(frozen=True, slots=True)
class DeviceAssignment:
    device_id: str
    wave: int
    phase: Phase = "queued"
    command_id: str | None = None
    sent_at: float | None = None
    resolved_at: float | None = None
    rollback_command_id: str | None = None
    rollback_sent_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RolloutState:
    id: int
    target: str
    status: RolloutStatus
    policy: RolloutPolicy
    devices: Mapping[str, DeviceAssignment]
    current_wave: int = 0
    wave_started_at: float | None = None
    soak_started_at: float | None = None
    reason: str | None = None
    finished_at: float | None = None
    released_waves: int | None = None  # waves it may start; None: every wave (no hold)

    @property
    def wave_count(self) -> int:
        return 1 + max((a.wave for a in self.devices.values()), default=0)

    def counts(self) -> dict[str, int]:
        return _phase_counts(self.devices.values())


@dataclass(frozen=True, slots=True)
class CommandAction:
    kind: Literal["update", "rollback", "switch"]
    target: str
    device_ids: tuple[str, ...]
    command_id: str
    # `update` of a rollout that holds: when its devices switch (see RolloutPolicy.switch).
    switch: SwitchMode | None = None
    switch_window: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    rollout: RolloutState
    changed: Mapping[str, DeviceAssignment] = field(default_factory=dict)
    commands: tuple[CommandAction, ...] = ()
    events: tuple[str, ...] = ()

    @property
    def status_changed(self) -> bool:
        return bool(self.events)


def plan_waves(device_count: int, waves_pct: Sequence[float]) -> list[int]:
    """Cumulative device counts per wave: each wave adds at least one device; waves that
    would add none (small fleets) are dropped. `plan_waves(200, (1, 10, 50, 100))` is
    `[2, 20, 100, 200]`."""
    if device_count <= 0:
        return []
    counts: list[int] = []
    for pct in waves_pct:
        wanted = min(device_count, max(1, math.ceil(device_count * pct / 100 - 1e-9)))
        if counts and wanted <= counts[-1]:
            wanted = counts[-1] + 1
        if wanted > device_count:
            break
        counts.append(wanted)
    if counts[-1] != device_count:
        counts.append(device_count)
    return counts


def assign_waves(device_ids: Sequence[str], waves_pct: Sequence[float]) -> list[DeviceAssignment]:
    """Devices in the given order, cut into waves by `plan_waves`."""
    cumulative = plan_waves(len(device_ids), waves_pct)
    result: list[DeviceAssignment] = []
    wave = 0
    for position, device_id in enumerate(device_ids):
        while position >= cumulative[wave]:
            wave += 1
        result.append(DeviceAssignment(device_id=device_id, wave=wave))
    return result


def apply_request(rollout: RolloutState, request: Request, actor: str, now: float) -> RolloutState:
    """An operator's pause, resume or abort; RolloutStateError if `TRANSITIONS` does not
    lead from the rollout's status to the one the request asks for."""
    if request not in REQUESTED_STATUS:
        raise RolloutStateError(
            f"unknown request {request!r} for rollout {rollout.id} "
            f"(expected one of {', '.join(REQUESTED_STATUS)})"
        )
    new_status = REQUESTED_STATUS[request]
    if new_status not in TRANSITIONS.get(rollout.status, frozenset()):
        allowed_from = sorted(s for s, to in TRANSITIONS.items() if new_status in to)
        raise RolloutStateError(
            f"cannot {request} rollout {rollout.id}: it is {rollout.status} "
            f"(allowed from {', '.join(allowed_from)})"
        )
    reason = f"{request}d by {actor}" if request != "abort" else f"aborted by {actor}"
    return _move(rollout, new_status, reason=reason if request != "resume" else None)


def switch_staged(
    rollout: RolloutState, device_ids: Sequence[str] | None, actor: str, now: float
) -> Decision:
    """An operator's "switch now" for devices staged and waiting (all of them, or those
    named): they go back to `sent` (the device timeout counts from now) with a `switch`
    command. RolloutStateError unless the rollout is running or paused; ConfigError naming
    the devices that are not staged in it."""
    if rollout.status not in ("running", "paused"):
        raise RolloutStateError(
            f"cannot switch devices of rollout {rollout.id}: it is {rollout.status} "
            f"(allowed while running or paused)"
        )
    staged = [a for a in rollout.devices.values() if a.phase == "staged"]
    if device_ids is not None:
        wanted = list(dict.fromkeys(device_ids))
        not_staged = [
            f"{d} ({rollout.devices[d].phase})" if d in rollout.devices else f"{d} (not in it)"
            for d in wanted
            if d not in rollout.devices or rollout.devices[d].phase != "staged"
        ]
        if not_staged:
            raise ConfigError(
                f"not staged in rollout {rollout.id}, nothing to switch: "
                f"{', '.join(not_staged[:20])}"
            )
        staged = [rollout.devices[d] for d in wanted]
    tick = _Tick(rollout, {}, now)
    command_id = tick.command_id("switch")
    for assignment in staged:
        tick.set(assignment, phase="sent", sent_at=now, command_id=command_id,
                 reason=f"switch sent by {actor}")
    commands = (
        (CommandAction("switch", rollout.target, tuple(a.device_id for a in staged), command_id),)
        if staged else ()
    )
    return Decision(replace(rollout, devices=tick.devices), tick.changed, commands)


def _move(rollout: RolloutState, to: RolloutStatus, **changes: object) -> RolloutState:
    """`rollout` with status `to` (and `changes`), if `TRANSITIONS` allows the move; a move
    the table does not list raises RolloutStateError (in `decide` that is a bug)."""
    if to not in TRANSITIONS.get(rollout.status, frozenset()):
        raise RolloutStateError(
            f"rollout {rollout.id} cannot go from {rollout.status} to {to}"
        )
    return replace(rollout, status=to, **changes)  # type: ignore[arg-type]


# The pure core ----------------------------------------------------------------------------


class _Tick:
    """Accumulates one decision: changed devices, commands and events."""

    def __init__(self, rollout: RolloutState, observations: Mapping[str, DeviceObservation],
                 now: float) -> None:
        self.rollout = rollout
        self.observations = observations
        self.now = now
        self.devices: dict[str, DeviceAssignment] = dict(rollout.devices)
        self.changed: dict[str, DeviceAssignment] = {}
        self.events: list[str] = []
        self.updates: list[str] = []
        self.rollbacks: list[str] = []

    def set(self, assignment: DeviceAssignment, **changes: object) -> DeviceAssignment:
        new = replace(assignment, **changes)  # type: ignore[arg-type]
        self.devices[new.device_id] = new
        self.changed[new.device_id] = new
        return new

    def fresh(self, obs: DeviceObservation | None, since: float | None) -> bool:
        """`obs` was reported after `since` (a report from before a command says nothing)."""
        return obs is not None and obs.status_at is not None and (
            since is None or obs.status_at >= since
        )

    def send_update(self, assignment: DeviceAssignment) -> None:
        self.set(assignment, phase="sent", sent_at=self.now,
                 command_id=self.command_id("update"), reason=None)
        self.updates.append(assignment.device_id)

    def send_rollback(self, assignment: DeviceAssignment) -> None:
        self.set(assignment, phase="rollback_sent", rollback_sent_at=self.now,
                 rollback_command_id=self.command_id("rollback"))
        self.rollbacks.append(assignment.device_id)

    def command_id(self, kind: str) -> str:
        return f"rollout-{self.rollout.id}-{kind}-{int(self.now * 1000)}"

    def switch_of(self, device_id: str) -> tuple[SwitchMode | None, str | None]:
        """(switch, switch_window) of the update command `device_id` gets: None for a
        rollout that switches at once; a device whose group has no window (and no "*")
        waits for a switch command rather than switch outside any window."""
        policy = self.rollout.policy
        if not policy.holds:
            return None, None
        if policy.switch == "command":
            return "command", None
        obs = self.observations.get(device_id)
        window = policy.window_for(obs.group if obs is not None else None)
        return ("window", window) if window is not None else ("command", None)

    def decision(self, rollout: RolloutState) -> Decision:
        commands = []
        by_switch: dict[tuple[SwitchMode | None, str | None], list[str]] = {}
        for device_id in self.updates:
            by_switch.setdefault(self.switch_of(device_id), []).append(device_id)
        for number, ((switch, window), device_ids) in enumerate(sorted(
            by_switch.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")
        )):
            command_id = self.command_id("update") + (f"-{number}" if number else "")
            for device_id in device_ids if number else ():  # one command id per payload
                self.set(self.devices[device_id], command_id=command_id)
            commands.append(CommandAction("update", rollout.target, tuple(device_ids),
                                          command_id, switch, window))
        rollout = replace(rollout, devices=self.devices)
        if self.rollbacks:
            commands.append(CommandAction("rollback", rollout.target, tuple(self.rollbacks),
                                          self.command_id("rollback")))
        return Decision(rollout, self.changed, tuple(commands), tuple(self.events))


def decide(
    rollout: RolloutState, observations: Mapping[str, DeviceObservation], now: float
) -> Decision:
    """One step of the rollout: judge what devices reported, then act on it."""
    if rollout.status not in ACTIVE_STATUSES:
        return Decision(rollout)
    tick = _Tick(rollout, observations, now)
    _judge_sent(tick)
    if rollout.status in ("running", "paused"):
        abort_reason = _failure_threshold_crossed(tick)
        if abort_reason is not None:
            rollout = _move(rollout, "aborting", reason=abort_reason)
            tick.events.append(f"aborting: {abort_reason}")
    if rollout.status == "running":
        rollout = _run(tick, rollout)
    if rollout.status == "aborting":
        rollout = _abort(tick, rollout)
    return tick.decision(rollout)


def _judge_sent(tick: _Tick) -> None:
    """Turn fresh reports of sent, staged (and succeeded) devices into verdicts."""
    target = tick.rollout.target
    timeout_s = tick.rollout.policy.device_timeout_s
    for assignment in list(tick.devices.values()):
        obs = tick.observations.get(assignment.device_id)
        if assignment.phase in ("sent", "staged"):
            if tick.fresh(obs, assignment.sent_at):
                assert obs is not None
                if obs.release == target and obs.state in COMMITTED_STATES:
                    tick.set(assignment, phase="succeeded", resolved_at=tick.now)
                    continue
                if obs.target == target and obs.state in FAILED_STATES:
                    tick.set(assignment, phase="failed", resolved_at=tick.now,
                             reason=f"{obs.state}: {obs.reason or 'no reason given'}")
                    continue
            if assignment.phase == "staged":
                _judge_staged(tick, assignment, obs)
                continue
            if _holds_staged(tick, assignment, obs):
                assert obs is not None
                tick.set(assignment, phase="staged", reason=obs.reason or "staged")
                continue
            if assignment.sent_at is not None and tick.now - assignment.sent_at > timeout_s:
                state = obs.state if obs is not None else "unknown"
                tick.set(assignment, phase="timed_out", resolved_at=tick.now,
                         reason=f"no verdict within {timeout_s:.0f} s (last state {state})")
        elif assignment.phase == "succeeded" and obs is not None:
            if obs.target == target and obs.state in FAILED_STATES and obs.release != target:
                tick.set(assignment, phase="failed", resolved_at=tick.now,
                         reason=f"{obs.state} after commit: {obs.reason or 'no reason given'}")


def _holds_staged(tick: _Tick, assignment: DeviceAssignment,
                  obs: DeviceObservation | None) -> bool:
    """A fresh report of the target staged, in a rollout whose devices hold there."""
    return (
        tick.rollout.policy.holds
        and tick.fresh(obs, assignment.sent_at)
        and obs is not None
        and obs.online
        and obs.target == tick.rollout.target
        and obs.state == "staged"
    )


def _judge_staged(tick: _Tick, assignment: DeviceAssignment,
                  obs: DeviceObservation | None) -> None:
    """A device staged and waiting has no device timeout (its window may be hours away)
    unless it stays offline that long; once it reports switching on, it is `sent` again
    and `device_timeout_s` counts from now."""
    timeout_s = tick.rollout.policy.device_timeout_s
    if obs is None or not obs.online:
        offline_since = obs.status_at if obs is not None else None
        if offline_since is not None and tick.now - offline_since > timeout_s:
            tick.set(assignment, phase="timed_out", resolved_at=tick.now,
                     reason=f"offline for {timeout_s:.0f} s while staged")
        return
    if (
        tick.fresh(obs, assignment.sent_at)
        and obs.target == tick.rollout.target
        and obs.state in BUSY_STATES
        and obs.state != "staged"
    ):
        tick.set(assignment, phase="sent", sent_at=tick.now,
                 reason=f"switching ({obs.state}) after waiting staged")


def _phase_counts(assignments: Iterable[DeviceAssignment]) -> dict[str, int]:
    """{phase: devices} in one pass (a tick at 10,000 devices counts several times)."""
    return dict(Counter(a.phase for a in assignments))


def _failure_threshold_crossed(tick: _Tick) -> str | None:
    policy = tick.rollout.policy
    counts = _phase_counts(tick.devices.values())
    updated = sum(counts.get(phase, 0) for phase in UPDATED_PHASES)
    failed = counts.get("failed", 0) + counts.get("timed_out", 0)
    if failed >= policy.failure_min_count and failed * 100 >= policy.failure_threshold_pct * max(
        updated, 1
    ):
        return (
            f"{failed} of {updated} updated devices failed "
            f"(threshold {policy.failure_threshold_pct:g}%, minimum {policy.failure_min_count})"
        )
    return None


def _runs_target(tick: _Tick, device_id: str) -> bool:
    obs = tick.observations.get(device_id)
    return obs is not None and obs.release == tick.rollout.target and obs.state in COMMITTED_STATES


def _start_device(tick: _Tick, assignment: DeviceAssignment) -> None:
    obs = tick.observations.get(assignment.device_id)
    if _runs_target(tick, assignment.device_id):
        tick.set(assignment, phase="already", resolved_at=tick.now)
    elif obs is not None and obs.online:
        tick.send_update(assignment)
    elif assignment.phase != "waiting":
        tick.set(assignment, phase="waiting")


def _start_devices(tick: _Tick, wave: int, phases: tuple[Phase, ...]) -> None:
    """Start the devices of waves up to `wave` in `phases`, in position order, while fewer
    than `max_in_flight` devices are sent (devices already on the target take no room)."""
    limit = tick.rollout.policy.max_in_flight
    in_flight = sum(1 for a in tick.devices.values() if a.phase == "sent")
    for assignment in list(tick.devices.values()):
        if assignment.wave > wave or assignment.phase not in phases:
            continue
        if limit is not None and in_flight >= limit and not _runs_target(tick, assignment.device_id):
            continue
        _start_device(tick, assignment)
        in_flight += tick.devices[assignment.device_id].phase == "sent"


def _run(tick: _Tick, rollout: RolloutState) -> RolloutState:
    policy = rollout.policy
    if rollout.wave_started_at is None:  # a fresh rollout: start the first wave
        return _start_wave(tick, rollout, 0)
    wave = rollout.current_wave
    # Catch up: devices of started waves that were offline and are back, then those queued
    # behind `max_in_flight`.
    _start_devices(tick, wave, ("waiting",))
    _start_devices(tick, wave, ("queued",))
    members = _phase_counts(a for a in tick.devices.values() if a.wave == wave)
    if any(members.get(phase) for phase in ("sent", "staged", "queued")):
        return rollout  # staged: the wave waits for its devices' windows (or the operator)
    waiting = members.get("waiting", 0)
    succeeded = members.get("succeeded", 0) + members.get("already", 0)
    reachable = sum(members.values()) - waiting
    needed = math.ceil(reachable * policy.success_pct / 100 - 1e-9)
    if reachable == 0:
        assert rollout.wave_started_at is not None
        if tick.now - rollout.wave_started_at < policy.device_timeout_s:
            return rollout  # nobody of this wave is online yet
    elif succeeded < max(1, needed):
        reason = (
            f"wave {wave + 1} settled with {succeeded} of {reachable} reachable devices "
            f"committed (needs {policy.success_pct:g}%)"
        )
        tick.events.append(f"aborting: {reason}")
        return _move(rollout, "aborting", reason=reason)
    if rollout.soak_started_at is None:
        tick.events.append(f"wave {wave + 1} passed; soaking {policy.soak_s:g} s")
        return replace(rollout, soak_started_at=tick.now)
    if tick.now - rollout.soak_started_at < policy.soak_s:
        return rollout
    if wave + 1 < rollout.wave_count:
        if rollout.released_waves is not None and wave + 1 >= rollout.released_waves:
            return rollout  # held: whoever gates it (a pipeline's canary) releases the next wave
        return _start_wave(tick, rollout, wave + 1)
    return _finish_when_caught_up(tick, rollout)


def _start_wave(tick: _Tick, rollout: RolloutState, wave: int) -> RolloutState:
    _start_devices(tick, wave, ("queued",))
    tick.events.append(f"wave {wave + 1} of {rollout.wave_count} started")
    return replace(rollout, current_wave=wave, wave_started_at=tick.now, soak_started_at=None)


def _finish_when_caught_up(tick: _Tick, rollout: RolloutState) -> RolloutState:
    """After the last wave: wait for offline devices until their timeout, then report them
    missed and complete."""
    timeout_s = rollout.policy.device_timeout_s
    assert rollout.wave_started_at is not None
    for assignment in list(tick.devices.values()):
        if assignment.phase == "waiting" and tick.now - rollout.wave_started_at >= timeout_s:
            tick.set(assignment, phase="missed", resolved_at=tick.now,
                     reason=f"offline for {timeout_s:.0f} s after the last wave started")
    if any(a.phase in ("waiting", "sent", "staged", "queued") for a in tick.devices.values()):
        return rollout
    missed = sum(1 for a in tick.devices.values() if a.phase == "missed")
    tick.events.append("completed" + (f" ({missed} devices missed)" if missed else ""))
    return _move(rollout, "completed", finished_at=tick.now)


def _abort(tick: _Tick, rollout: RolloutState) -> RolloutState:
    """Stop sending updates; roll back every device this rollout put on the target."""
    target = rollout.target
    timeout_s = rollout.policy.device_timeout_s
    for assignment in list(tick.devices.values()):
        obs = tick.observations.get(assignment.device_id)
        if assignment.phase in ("queued", "waiting"):
            tick.set(assignment, phase="skipped", reason="rollout aborted before its update")
        elif assignment.phase == "staged" or (
            assignment.phase == "sent" and _holds_staged(tick, assignment, obs)
        ):
            # Waiting to switch: the rollback cancels the staged update on the device.
            tick.send_rollback(assignment)
        elif assignment.phase in ("sent", "failed", "timed_out", "succeeded"):
            # Roll back only a device that settled on the target: one still busy finishes
            # first (its own health window may roll it back), one elsewhere needs nothing.
            on_target = (
                obs is not None
                and obs.release == target
                and obs.state not in BUSY_STATES
                and tick.fresh(obs, assignment.sent_at)
            )
            if on_target:
                tick.send_rollback(assignment)
        elif assignment.phase == "rollback_sent":
            if tick.fresh(obs, assignment.rollback_sent_at):
                assert obs is not None
                if obs.release != target and obs.state not in BUSY_STATES:
                    tick.set(assignment, phase="rolled_back", resolved_at=tick.now)
                    continue
            sent_at = assignment.rollback_sent_at or tick.now
            if tick.now - sent_at > timeout_s:
                tick.set(assignment, phase="rollback_failed", resolved_at=tick.now,
                         reason=f"still on {target} {timeout_s:.0f} s after rollback was sent")
    if _abort_settled(tick, rollout):
        tick.events.append("aborted")
        return _move(rollout, "aborted", finished_at=tick.now)
    return rollout


def _abort_settled(tick: _Tick, rollout: RolloutState) -> bool:
    """Nothing left that may still land on the target or is being rolled back."""
    timeout_s = rollout.policy.device_timeout_s
    for assignment in tick.devices.values():
        if assignment.phase == "rollback_sent":
            return False
        if assignment.phase in ("sent", "succeeded", "failed", "timed_out"):
            obs = tick.observations.get(assignment.device_id)
            if obs is not None and obs.release == rollout.target:
                return False  # on the target, its rollback goes out when it settles
            busy = obs is not None and obs.state in BUSY_STATES and obs.online
            recent = assignment.sent_at is not None and tick.now - assignment.sent_at <= timeout_s
            if busy and recent:
                return False
            if assignment.phase == "sent" and recent and (obs is None or not tick.fresh(
                obs, assignment.sent_at
            )):
                return False  # has not answered yet: it may still apply the update
    return True
