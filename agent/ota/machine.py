"""The update state machine, pure: a transition table, a record, and recovery after a restart.

Nothing here touches disk, network or clock; the shell (`update_runner`) persists the
record this module returns *before* it performs the step the new state names, and feeds
the step's outcome back as an event. Mender's daemon works the same way.

    downloading ──ok──► verifying ──ok──► staged ──ok──► smoke_testing ──ok──► switching
         │                  │               │                 │                  │ ok
         └──────fail────────┴─────fail──────┴──────fail───────┴─► update_failed  ▼
                                                                     ▲      health_window
                                             switching ──fail──► rolling_back ◄─regressed / rollback
                                                                     │ ok       │ healthy
                                                                     ▼          ▼
                                                                rolled_back   committed

`update_failed` means the switch never happened: the previous model kept serving.
`rolled_back` means the new model served for a while and the previous one is back.

Download now, switch later: an update whose `switch` is "window" or "command" holds in
`staged` once its step passed (`holds(record, now)`, pure): until `now` is inside its
`switch_window` (UTC), or until `release_hold` (a `switch` command). The hold is saved in
the record, so it survives a restart; `begin_hold` resets the interrupted-attempt count
(the loop guard counts restarts that interrupt work, not restarts while waiting).

On restart (`recover`) a saved state maps to the step to run again; every step is
idempotent. Pre-switch states resume (the download resumes with HTTP Range) until
`max_attempts` interrupted attempts, then fail; `switching`, `health_window` count boots
and past `max_boots` force a rollback (the loop guard: a model that crashes the agent
never gets to stay).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeops.errors import UpdateError
from edgeops.switch_window import SwitchWindow
from edgeops.update_states import (
    ACTIVE_UPDATE_STATES,
    SWITCH_MODES,
    TERMINAL_UPDATE_STATES,
    UPDATE_STATES,
    SwitchMode,
    UpdateState,
)

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Event",
    "InvalidTransition",
    "UpdateRecord",
    "UpdateState",
    "begin_hold",
    "hold_reason",
    "holds",
    "new_update",
    "recover",
    "release_hold",
    "transition",
]

Event = Literal["ok", "fail", "healthy", "regressed", "rollback"]

TRANSITIONS: dict[tuple[UpdateState, Event], UpdateState] = {
    ("downloading", "ok"): "verifying",
    ("downloading", "fail"): "update_failed",
    ("verifying", "ok"): "staged",
    ("verifying", "fail"): "update_failed",
    ("staged", "ok"): "smoke_testing",
    ("staged", "fail"): "update_failed",
    ("smoke_testing", "ok"): "switching",
    ("smoke_testing", "fail"): "update_failed",
    ("switching", "ok"): "health_window",
    ("switching", "fail"): "rolling_back",
    ("switching", "rollback"): "rolling_back",
    ("health_window", "healthy"): "committed",
    ("health_window", "regressed"): "rolling_back",
    ("health_window", "rollback"): "rolling_back",
    ("health_window", "fail"): "rolling_back",
    ("rolling_back", "ok"): "rolled_back",
    ("rolling_back", "fail"): "update_failed",
}
TERMINAL_STATES: frozenset[UpdateState] = TERMINAL_UPDATE_STATES
ACTIVE_STATES: frozenset[UpdateState] = ACTIVE_UPDATE_STATES
PRE_SWITCH_STATES: frozenset[UpdateState] = frozenset(
    {"downloading", "verifying", "staged", "smoke_testing"}
)
BOOT_COUNTED_STATES: frozenset[UpdateState] = frozenset({"switching", "health_window"})
HISTORY_LIMIT = 32


class InvalidTransition(UpdateError):
    """An event that the transition table does not allow in the current state (a bug)."""


@dataclass(frozen=True)
class UpdateRecord:
    """Everything the agent must remember about one update across a power cut.

    `slot` is the slot the update writes into; `previous_slot`/`previous_target` what
    served before (the rollback destination). `baseline` holds the previous model's
    health statistics recorded just before the switch. `history` is the chain of
    (state, timestamp) the update went through, for status and tests. `allow_downgrade`:
    the server's command was an explicit rollback, so an older release may install.
    `switch` / `switch_window`: when the staged update may switch (see `holds`).
    """

    target: str
    state: UpdateState
    slot: str
    previous_slot: str | None
    previous_target: str | None
    started_at: float
    updated_at: float
    reason: str | None = None
    attempts: int = 0  # interrupted pre-switch attempts
    boots: int = 0  # restarts while switching or in the health window
    baseline: dict[str, Any] | None = None
    health_started_at: float | None = None
    history: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    allow_downgrade: bool = False
    switch: SwitchMode = "now"
    switch_window: str | None = None  # "HH:MM-HH:MM" UTC, with switch "window"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["history"] = [list(item) for item in self.history]
        value["schema"] = 1
        return value

    @classmethod
    def from_json(cls, raw: Any) -> UpdateRecord:
        """Parse a saved record; UpdateError if it is not one."""
        try:
            if raw.get("schema") != 1:
                raise ValueError(f"unknown schema {raw.get('schema')!r}")
            values = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw}
            values["history"] = tuple((str(s), float(t)) for s, t in values.get("history", ()))
            record = cls(**values)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise UpdateError(f"update state record is corrupt: {err}") from err
        if record.state not in UPDATE_STATES:
            raise UpdateError(f"update state record has unknown state {record.state!r}")
        _check_switch(record.switch, record.switch_window)
        return record


def _check_switch(switch: str, switch_window: str | None) -> None:
    if switch not in SWITCH_MODES:
        raise UpdateError(f"unknown switch mode {switch!r} (expected one of {SWITCH_MODES})")
    if (switch == "window") != (switch_window is not None):
        raise UpdateError('a switch window goes with switch "window", and only with it')
    if switch_window is not None:
        try:
            SwitchWindow.parse(switch_window)
        except ValueError as err:
            raise UpdateError(str(err)) from err


def new_update(
    target: str,
    slot: str,
    previous_slot: str | None,
    previous_target: str | None,
    now: float,
    *,
    allow_downgrade: bool = False,
    switch: SwitchMode = "now",
    switch_window: str | None = None,
) -> UpdateRecord:
    """The record of an update about to start downloading; UpdateError for a bad switch."""
    _check_switch(switch, switch_window)
    return UpdateRecord(
        target=target,
        state="downloading",
        slot=slot,
        previous_slot=previous_slot,
        previous_target=previous_target,
        started_at=now,
        updated_at=now,
        history=(("downloading", now),),
        allow_downgrade=allow_downgrade,
        switch=switch,
        switch_window=switch_window,
    )


def holds(record: UpdateRecord, now: float) -> bool:
    """True while the staged update must wait before it smoke-tests and switches."""
    if record.state != "staged" or record.switch == "now":
        return False
    if record.switch == "command":
        return True
    assert record.switch_window is not None  # checked when the record was made
    return not SwitchWindow.parse(record.switch_window).contains(now)


def hold_reason(record: UpdateRecord) -> str:
    """What a held update waits for, as its status `reason` says it."""
    if record.switch == "window":
        return f"staged: switches in its window {record.switch_window} UTC"
    return "staged: switches on a switch command"


def begin_hold(record: UpdateRecord, now: float) -> UpdateRecord:
    """The staged record once its step passed and it starts waiting (saved before waiting).

    Its interrupted attempts start again from 0: a restart while waiting interrupts nothing."""
    history = record.history
    if not history or history[-1][0] != "hold":
        history = (*history, ("hold", now))[-HISTORY_LIMIT:]
    return dataclasses.replace(
        record, reason=hold_reason(record), attempts=0, updated_at=now, history=history
    )


def release_hold(record: UpdateRecord, now: float) -> UpdateRecord:
    """The record after a `switch` command: it switches as soon as it is staged."""
    history = (*record.history, ("release", now))[-HISTORY_LIMIT:]
    return dataclasses.replace(
        record, switch="now", switch_window=None, reason=None, updated_at=now, history=history
    )


def transition(
    record: UpdateRecord, event: Event, now: float, reason: str | None = None, **changes: Any
) -> UpdateRecord:
    """The record after `event` in `record.state`; InvalidTransition if the table forbids it."""
    next_state = TRANSITIONS.get((record.state, event))
    if next_state is None:
        raise InvalidTransition(f"no transition from {record.state!r} on {event!r}")
    history = (*record.history, (next_state, now))[-HISTORY_LIMIT:]
    if next_state == "health_window":
        changes.setdefault("health_started_at", now)
    keep_reason = reason if reason is not None else (record.reason if next_state == "rolled_back" else None)
    return dataclasses.replace(
        record, state=next_state, updated_at=now, reason=keep_reason, history=history, **changes
    )


def recover(
    record: UpdateRecord, now: float, *, max_attempts: int, max_boots: int
) -> UpdateRecord:
    """The record to continue from after the agent restarted with `record` on disk."""
    if record.terminal:
        return record
    state = record.state
    if state in PRE_SWITCH_STATES:
        attempts = record.attempts + 1
        if attempts > max_attempts:
            return _jump(
                record,
                "update_failed",
                now,
                f"gave up after {record.attempts} interrupted attempts (last in {state})",
                attempts=attempts,
            )
        # verifying reads the downloaded file, which is only trusted straight after
        # ngclient checked it: go through the (cached, resumable) download again.
        resume: UpdateState = "downloading" if state == "verifying" else state
        return _jump(record, resume, now, None, attempts=attempts)
    if state in BOOT_COUNTED_STATES:
        boots = record.boots + 1
        if boots > max_boots:
            return _jump(
                record,
                "rolling_back",
                now,
                f"loop guard: the agent restarted {record.boots} times in {state}",
                boots=boots,
            )
        changes: dict[str, Any] = {"boots": boots}
        if state == "health_window":
            changes["health_started_at"] = now  # the samples were in memory: start over
        return _jump(record, state, now, None, **changes)
    return _jump(record, state, now, record.reason)  # rolling_back: finish it


def _jump(
    record: UpdateRecord, state: UpdateState, now: float, reason: str | None, **changes: Any
) -> UpdateRecord:
    """A recovery move (outside the table: it maps a saved state to where to resume)."""
    history = (*record.history, (f"recover:{state}", now))[-HISTORY_LIMIT:]
    return dataclasses.replace(
        record, state=state, updated_at=now, reason=reason, history=history, **changes
    )
