"""The names of the states a device agent reports, defined once for agent, server and console.

An agent's `DeviceStatus.state` is one of `AgentState`: a lifecycle state (`starting`,
`idle`, `running`, `offline`) or a step of the update of its target (`UpdateState`, the
states of the agent's update machine in agent/ota/machine.py). The server's rollout
controller reads these names to judge a device's verdict on a release; the groupings it
and the agent rely on (terminal, busy, committed, failed) live here too, so a state added
to the machine is classified in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ACTIVE_UPDATE_STATES",
    "AGENT_STATES",
    "AgentState",
    "BUSY_STATES",
    "COMMITTED_STATES",
    "FAILED_UPDATE_STATES",
    "LifecycleState",
    "SWITCH_MODES",
    "SwitchMode",
    "TERMINAL_UPDATE_STATES",
    "UPDATE_STATES",
    "UpdateState",
]

UpdateState = Literal[
    "downloading",
    "verifying",
    "staged",
    "smoke_testing",
    "switching",
    "health_window",  # serving the target, comparing its health with the previous model
    "committed",  # the target passed its health window and is the active model
    "update_failed",  # refused before the switch; the previous model keeps serving
    "rolling_back",
    "rolled_back",  # switched back to the previous model; `reason` says why
]
LifecycleState = Literal[
    "starting",
    "idle",  # no model yet
    "running",  # serving the active model, no update in progress
    "offline",  # published by the broker as the last will
]
AgentState = Literal[LifecycleState, UpdateState]

UPDATE_STATES: tuple[UpdateState, ...] = get_args(UpdateState)
AGENT_STATES: tuple[AgentState, ...] = get_args(AgentState)

# When a staged update switches: at once, inside its maintenance window, or on command. A
# device holding for either reports `staged` (its `reason` says what it waits for).
SwitchMode = Literal["now", "window", "command"]
SWITCH_MODES: tuple[SwitchMode, ...] = get_args(SwitchMode)

# An update that reached one of these is over; nothing resumes it after a restart.
TERMINAL_UPDATE_STATES: frozenset[UpdateState] = frozenset(
    {"committed", "update_failed", "rolled_back"}
)
# An update (or its rollback) is under way.
ACTIVE_UPDATE_STATES: frozenset[UpdateState] = frozenset(UPDATE_STATES) - TERMINAL_UPDATE_STATES
# A device still busy: updating, rolling back, or not started yet.
BUSY_STATES: frozenset[AgentState] = ACTIVE_UPDATE_STATES | {"starting"}
# A device runs its release and its health window is over. "running" is the steady state an
# agent reports after a restart (or an agent without a health window) with the same release.
COMMITTED_STATES: frozenset[AgentState] = frozenset({"committed", "running"})
# The update of the reported target failed: never switched, or switched back.
FAILED_UPDATE_STATES: frozenset[UpdateState] = frozenset({"update_failed", "rolled_back"})
