"""Pipeline runs in a migrated SQLite database: one run in flight per model, moves guarded
by the transition table and the run's revision, approval, and the JSON the API serves."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import NotFoundError
from server.db.tables import PipelineRun, PipelineStep
from server.pipeline import store
from server.pipeline.machine import PipelineStateError
from server.pipeline.store import (
    PipelineConflictError,
    active_run,
    approve,
    create_run,
    get_run,
    list_runs,
    move,
    note,
    run_json,
    steps,
    update_results,
)

pytestmark = pytest.mark.pipeline

POLICY = {"model": "digits", "approval": "manual"}
EVENT = {"kind": "event", "event": "drift_detected", "cohort": "north"}
TO_APPROVAL = ("training", "evaluating", "gated", "packaging", "signed", "awaiting_approval")


def new_run(session: Session, model: str = "digits", now: float = 100.0,
            trigger: dict[str, Any] | None = None) -> PipelineRun:
    return create_run(session, model, POLICY, trigger or {"kind": "manual"}, "alice", now, 3)


def walk(session: Session, run: PipelineRun, states: tuple[str, ...], start: float) -> None:
    for offset, state in enumerate(states, start=1):
        move(session, run, state, f"entered {state}", start + offset)


def step_count(factory: sessionmaker, run_id: int) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(PipelineStep)
                                  .where(PipelineStep.run_id == run_id)) or 0)


def test_create_run_starts_triggered_with_its_first_timeline_entry(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        run = new_run(session, trigger=EVENT)
        run_id = run.id
    with session_factory() as session:
        run = get_run(session, run_id)
        assert (run.status, run.active_model, run.revision) == ("triggered", "digits", 0)
        assert (run.champion_version, run.created_by, run.created_at) == (3, "alice", 100.0)
        assert run.policy == POLICY and run.trigger == EVENT and run.results == {}
        assert run.finished_at is None and run.reason is None
        assert [(s.status, s.message, s.detail) for s in steps(session, run_id)] == [
            ("triggered", "triggered by drift_detected on north", EVENT)]
        assert active_run(session, "digits") is not None
        assert active_run(session, "other") is None


@pytest.mark.parametrize(("trigger", "message"), [
    ({"kind": "schedule"}, "triggered by the schedule"),
    ({"kind": "manual"}, "triggered by alice"),
    ({}, "triggered by alice"),
])
def test_the_trigger_message_names_what_started_the_run(
    session_factory: sessionmaker, trigger: dict[str, Any], message: str,
) -> None:
    with session_factory.begin() as session:
        run = new_run(session, trigger=trigger)
        assert [s.message for s in steps(session, run.id)] == [message]


def test_a_second_run_in_flight_for_the_same_model_is_refused(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        first = new_run(session).id
    with session_factory() as session, pytest.raises(PipelineConflictError) as caught:
        new_run(session, now=101.0)
    assert str(caught.value) == (f"pipeline run {first} of 'digits' is still triggered; "
                                 "one run at a time per model")
    with session_factory() as session:
        assert [r.id for r in list_runs(session)] == [first]


def test_another_model_may_run_at_the_same_time(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        digits = new_run(session).id
        other = new_run(session, model="keywords").id
    with session_factory() as session:
        assert active_run(session, "digits").id == digits  # type: ignore[union-attr]
        assert active_run(session, "keywords").id == other  # type: ignore[union-attr]


def test_the_unique_constraint_refuses_a_race_past_the_check(
    session_factory: sessionmaker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with session_factory.begin() as session:
        new_run(session)
    monkeypatch.setattr(store, "active_run", lambda session, model: None)  # both saw none
    with session_factory() as session, pytest.raises(
        PipelineConflictError, match="another pipeline run of 'digits' started at the same time"
    ):
        new_run(session, now=101.0)


@pytest.mark.parametrize("final", ["refused", "promoted", "rolled_back"])
def test_a_final_state_frees_the_model_and_records_when_and_why(
    session_factory: sessionmaker, final: str,
) -> None:
    path = (*TO_APPROVAL, "canary") if final != "refused" else ("training",)
    with session_factory.begin() as session:
        run = new_run(session)
        walk(session, run, path, 100.0)
        move(session, run, final, f"verdict: {final}", 200.0)
        first = run.id
    with session_factory.begin() as session:
        run = get_run(session, first)
        assert (run.status, run.active_model, run.finished_at) == (final, None, 200.0)
        assert (run.reason, run.revision) == (f"verdict: {final}", len(path) + 1)
        assert active_run(session, "digits") is None
        second = new_run(session, now=300.0)
        assert second.id != first and second.status == "triggered"


def test_an_explicit_reason_wins_over_the_message(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        move(session, run, "refused", "refused at a gate", 110.0, reason="accuracy 0.91 < 0.95")
        assert run.reason == "accuracy 0.91 < 0.95"


def test_moves_outside_the_final_states_keep_the_model_in_flight(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        move(session, run, "training", "training", 105.0, detail={"round": 1},
             training_attempts=1)
        assert (run.status, run.active_model, run.finished_at, run.reason) == (
            "training", "digits", None, None)
        assert (run.revision, run.updated_at, run.state_entered_at) == (1, 105.0, 105.0)
        assert run.training_attempts == 1 and run.created_at == 100.0
        assert steps(session, run.id)[-1].detail == {"round": 1}


def test_a_move_the_table_forbids_raises_and_writes_nothing(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        run_id = new_run(session).id
    with session_factory() as session:
        run = get_run(session, run_id)
        with pytest.raises(PipelineStateError, match="from triggered to packaging"):
            move(session, run, "packaging", "skip the gates", 110.0)
        session.commit()
    with session_factory() as session:
        assert (get_run(session, run_id).status, get_run(session, run_id).revision) == (
            "triggered", 0)
    assert step_count(session_factory, run_id) == 1


def test_a_move_from_a_stale_revision_raises_and_writes_nothing(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        run_id = new_run(session).id
    with session_factory() as stale_session:
        stale = get_run(stale_session, run_id)
        with session_factory.begin() as other:  # another session moves it first
            move(other, get_run(other, run_id), "training", "training by the other", 110.0)
        with pytest.raises(PipelineConflictError,
                           match=f"pipeline run {run_id} changed meanwhile"):
            move(stale_session, stale, "training", "training by the stale one", 111.0)
        assert not stale_session.new  # no timeline entry pending either
        stale_session.commit()
    with session_factory() as session:
        run = get_run(session, run_id)
        assert (run.status, run.revision, run.updated_at) == ("training", 1, 110.0)
        assert [s.message for s in steps(session, run_id)] == [
            "triggered by alice", "training by the other"]


def test_results_merged_before_a_move_are_persisted_with_it(
    session_factory: sessionmaker,
) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        update_results(run, training={"rounds": 3})
        move(session, run, "training", "training", 101.0)
        update_results(run, gates={"passed": True})
        move(session, run, "evaluating", "evaluating", 102.0)
        run_id = run.id
    with session_factory() as session:
        assert get_run(session, run_id).results == {"training": {"rounds": 3},
                                                     "gates": {"passed": True}}


def test_approve_is_refused_outside_awaiting_approval(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        with pytest.raises(PipelineStateError) as caught:
            approve(session, run.id, "bob", 101.0)
        assert str(caught.value) == (f"pipeline run {run.id} is triggered, not "
                                     "awaiting_approval: nothing to approve")
        assert run.approved_by is None
        walk(session, run, (*TO_APPROVAL, "canary"), 100.0)
        with pytest.raises(PipelineStateError, match="is canary, not awaiting_approval"):
            approve(session, run.id, "bob", 120.0)
        with pytest.raises(NotFoundError, match="pipeline run 999 does not exist"):
            approve(session, 999, "bob", 120.0)


def test_approve_records_the_first_approver_once(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        walk(session, run, TO_APPROVAL, 100.0)
        run_id = run.id
    with session_factory.begin() as session:
        approved = approve(session, run_id, "bob", 150.0)
        assert (approved.approved_by, approved.updated_at) == ("bob", 150.0)
    with session_factory.begin() as session:
        again = approve(session, run_id, "carol", 160.0)  # idempotent: no error, no change
        assert (again.approved_by, again.updated_at, again.status) == (
            "bob", 150.0, "awaiting_approval")
    with session_factory() as session:
        approvals = [(s.status, s.message, s.detail) for s in steps(session, run_id)
                     if s.message.startswith("approved")]
        assert approvals == [("awaiting_approval", "approved by bob", {"actor": "bob"})]


def test_run_json_has_the_timeline_in_order(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        run = new_run(session)
        move(session, run, "training", "training started", 101.0)
        note(session, run, "round 1 of 3", 102.0, {"round": 1})
        move(session, run, "refused", "training failed", 103.0)
        run_id = run.id
    with session_factory() as session:
        run = get_run(session, run_id)
        out = run_json(run, steps(session, run_id))
    assert out["timeline"] == [
        {"at": 100.0, "status": "triggered", "message": "triggered by alice",
         "detail": {"kind": "manual"}},
        {"at": 101.0, "status": "training", "message": "training started", "detail": {}},
        {"at": 102.0, "status": "training", "message": "round 1 of 3", "detail": {"round": 1}},
        {"at": 103.0, "status": "refused", "message": "training failed", "detail": {}},
    ]
    assert (out["id"], out["model"], out["status"], out["active"]) == (
        run_id, "digits", "refused", False)
    assert (out["reason"], out["finished_at"], out["champion_version"]) == (
        "training failed", 103.0, 3)
    assert out["policy"] == POLICY and out["results"] == {}


def test_run_json_without_a_timeline_leaves_it_out(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        out = run_json(new_run(session))
    assert "timeline" not in out
    assert (out["status"], out["active"], out["approved_by"]) == ("triggered", True, None)


def test_list_runs_is_newest_first_and_filters(session_factory: sessionmaker) -> None:
    with session_factory.begin() as session:
        old = new_run(session)
        move(session, old, "refused", "cancelled", 101.0)
        new = new_run(session, now=102.0)
        other = new_run(session, model="keywords", now=103.0)
        ids = (old.id, new.id, other.id)
    with session_factory() as session:
        assert [r.id for r in list_runs(session)] == [ids[2], ids[1], ids[0]]
        assert [r.id for r in list_runs(session, model="digits")] == [ids[1], ids[0]]
        assert [r.id for r in list_runs(session, status="refused")] == [ids[0]]
        assert [r.id for r in list_runs(session, limit=1)] == [ids[2]]
        with pytest.raises(NotFoundError):
            get_run(session, 999)
