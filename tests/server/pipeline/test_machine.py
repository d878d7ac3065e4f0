"""The pipeline run's transition table: every listed move allowed, every other refused.

The expected table is written out here on its own, so an edit of `TRANSITIONS` that adds a
shortcut (skipping a gate) or removes a way out fails this test instead of passing silently.
"""

from __future__ import annotations

from itertools import pairwise, product
from typing import get_args

import pytest

from server.pipeline.machine import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    STATUSES,
    TRANSITIONS,
    PipelineStateError,
    PipelineStatus,
    check_move,
)

pytestmark = pytest.mark.pipeline

HAPPY_PATH = ("triggered", "training", "evaluating", "gated", "packaging", "signed",
              "awaiting_approval", "canary", "promoted")
REFUSABLE = HAPPY_PATH[:7]  # every state before canary may end refused

EXPECTED: set[tuple[str, str]] = {
    *pairwise(HAPPY_PATH),
    ("canary", "rolled_back"),
    *((state, "refused") for state in REFUSABLE),
}
REFUSED_MOVES = sorted(set(product(STATUSES, STATUSES)) - EXPECTED)


def test_the_table_is_exactly_the_documented_one() -> None:
    listed = {(current, to) for current, targets in TRANSITIONS.items() for to in targets}
    assert listed == EXPECTED
    assert set(TRANSITIONS) == set(STATUSES)
    assert set(get_args(PipelineStatus)) == set(STATUSES)
    assert len(STATUSES) == len(set(STATUSES)) == 11


def test_final_and_active_statuses_split_the_states() -> None:
    assert FINAL_STATUSES == {"promoted", "rolled_back", "refused"}
    assert ACTIVE_STATUSES | FINAL_STATUSES == set(STATUSES)
    assert not ACTIVE_STATUSES & FINAL_STATUSES
    assert all(not TRANSITIONS[state] for state in FINAL_STATUSES)
    assert all(TRANSITIONS[state] for state in ACTIVE_STATUSES)


@pytest.mark.parametrize(("current", "to"), sorted(EXPECTED))
def test_every_listed_move_is_allowed(current: str, to: str) -> None:
    check_move(7, current, to)  # raises if refused


@pytest.mark.parametrize(("current", "to"), REFUSED_MOVES)
def test_every_other_move_is_refused_naming_both_states(current: str, to: str) -> None:
    with pytest.raises(PipelineStateError) as caught:
        check_move(7, current, to)
    assert str(caught.value) == f"pipeline run 7 cannot go from {current} to {to}"


def test_refused_moves_cover_self_moves_going_back_and_skipping_a_gate() -> None:
    refused = set(REFUSED_MOVES)
    assert ("training", "training") in refused
    assert ("evaluating", "training") in refused  # no going back
    assert ("evaluating", "packaging") in refused  # no skipping the gates
    assert ("signed", "canary") in refused  # no skipping approval
    assert ("canary", "refused") in refused  # past the canary only promote or roll back
    assert len(refused) == len(STATUSES) ** 2 - len(EXPECTED)


@pytest.mark.parametrize(("current", "to"), [("bogus", "training"), ("triggered", "bogus")])
def test_unknown_states_are_refused(current: str, to: str) -> None:
    with pytest.raises(PipelineStateError, match=f"from {current} to {to}"):
        check_move(1, current, to)
