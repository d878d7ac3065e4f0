"""The pure update state machine: table, recovery from every saved state, loop guard."""

from __future__ import annotations

import pytest

from agent.ota.machine import (
    TERMINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    UpdateRecord,
    new_update,
    recover,
    transition,
)

pytestmark = [pytest.mark.ota]


def run(events: list[str]) -> UpdateRecord:
    record = new_update("m/2/model.fp32.onnx", "b", "a", "m/1/model.fp32.onnx", 0.0)
    for i, event in enumerate(events, 1):
        record = transition(record, event, float(i))  # type: ignore[arg-type]
    return record


@pytest.mark.parametrize(
    ("events", "chain"),
    [
        (["ok"] * 5 + ["healthy"], ["downloading", "verifying", "staged", "smoke_testing", "switching", "health_window", "committed"]),
        (["fail"], ["downloading", "update_failed"]),
        (["ok", "ok", "ok", "fail"], ["downloading", "verifying", "staged", "smoke_testing", "update_failed"]),
        (["ok"] * 5 + ["regressed", "ok"], ["downloading", "verifying", "staged", "smoke_testing", "switching", "health_window", "rolling_back", "rolled_back"]),
        (["ok"] * 4 + ["fail", "ok"], ["downloading", "verifying", "staged", "smoke_testing", "switching", "rolling_back", "rolled_back"]),
    ],
)
def test_chains_of_states(events: list[str], chain: list[str]) -> None:
    assert [s for s, _ in run(events).history] == chain


def test_terminal_states_accept_no_event_and_bad_events_raise() -> None:
    for (state, _event) in TRANSITIONS:
        assert state not in TERMINAL_STATES
    with pytest.raises(InvalidTransition):
        transition(run(["ok"] * 5 + ["healthy"]), "ok", 9.0)
    with pytest.raises(InvalidTransition):
        transition(run([]), "healthy", 1.0)


def test_rolled_back_keeps_the_reason() -> None:
    record = transition(run(["ok"] * 5), "regressed", 6.0, "p95 up")
    assert transition(record, "ok", 7.0).reason == "p95 up"


@pytest.mark.parametrize(
    ("saved", "resumed"),
    [
        ([], "downloading"),
        (["ok"], "downloading"),  # verifying: the download is checked again
        (["ok", "ok"], "staged"),
        (["ok", "ok", "ok"], "smoke_testing"),
        (["ok"] * 4, "switching"),
        (["ok"] * 5, "health_window"),
        (["ok"] * 5 + ["regressed"], "rolling_back"),
        (["ok"] * 5 + ["healthy"], "committed"),
        (["fail"], "update_failed"),
    ],
)
def test_recovery_maps_every_saved_state(saved: list[str], resumed: str) -> None:
    assert recover(run(saved), 100.0, max_attempts=3, max_boots=3).state == resumed


def test_loop_guard_forces_rollback_after_max_boots() -> None:
    record = run(["ok"] * 5)
    for _ in range(3):
        record = recover(record, 100.0, max_attempts=3, max_boots=3)
        assert record.state == "health_window"
    record = recover(record, 101.0, max_attempts=3, max_boots=3)
    assert record.state == "rolling_back" and "loop guard" in (record.reason or "")
    assert transition(record, "ok", 102.0).state == "rolled_back"


def test_interrupted_downloads_give_up_after_max_attempts() -> None:
    record = run([])
    for _ in range(2):
        record = recover(record, 1.0, max_attempts=2, max_boots=3)
    assert record.state == "downloading"
    record = recover(record, 2.0, max_attempts=2, max_boots=3)
    assert record.state == "update_failed" and "interrupted" in (record.reason or "")


def test_record_round_trips_through_json() -> None:
    record = run(["ok"] * 5)
    assert UpdateRecord.from_json(record.to_json()) == record
