"""The device state names are defined once (edgeops.update_states) and every side uses them:
the agent's update machine, the status message, and the server's rollout controller."""

from __future__ import annotations

from typing import get_args

import pytest

from agent.ota import machine
from edgeops.messages import DeviceStatus
from edgeops.update_states import (
    ACTIVE_UPDATE_STATES,
    AGENT_STATES,
    BUSY_STATES,
    COMMITTED_STATES,
    FAILED_UPDATE_STATES,
    TERMINAL_UPDATE_STATES,
    UPDATE_STATES,
)
from server.rollouts import controller


def test_the_update_machine_walks_exactly_the_shared_update_states() -> None:
    in_table = {state for (state, _), to in machine.TRANSITIONS.items() for state in (state, to)}

    assert in_table == set(UPDATE_STATES)
    assert machine.TERMINAL_STATES is TERMINAL_UPDATE_STATES
    assert machine.ACTIVE_STATES is ACTIVE_UPDATE_STATES
    assert all(not any(s == state for (s, _) in machine.TRANSITIONS) for state in TERMINAL_UPDATE_STATES)


def test_the_status_message_accepts_every_agent_state_and_nothing_else() -> None:
    assert get_args(DeviceStatus.model_fields["state"].annotation) == AGENT_STATES
    assert set(UPDATE_STATES) < set(AGENT_STATES)


def test_the_rollout_controller_reads_the_shared_groupings() -> None:
    assert controller.COMMITTED_STATES is COMMITTED_STATES
    assert controller.FAILED_STATES is FAILED_UPDATE_STATES
    assert controller.BUSY_STATES is BUSY_STATES


@pytest.mark.parametrize(
    "group", [BUSY_STATES, COMMITTED_STATES, FAILED_UPDATE_STATES, TERMINAL_UPDATE_STATES]
)
def test_every_grouping_names_only_known_states(group: frozenset[str]) -> None:
    assert set(group) <= set(AGENT_STATES)


def test_groupings_do_not_overlap_where_a_verdict_depends_on_them() -> None:
    assert not (BUSY_STATES & COMMITTED_STATES)
    assert not (BUSY_STATES & FAILED_UPDATE_STATES)
    assert not (COMMITTED_STATES & FAILED_UPDATE_STATES)
