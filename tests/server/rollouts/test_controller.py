"""The pure rollout controller: wave planning and decide() over scenario tables."""

from __future__ import annotations

import pytest

from server.rollouts.controller import (
    DeviceObservation,
    RolloutPolicy,
    RolloutState,
    apply_request,
    assign_waves,
    decide,
    plan_waves,
)
from server.rollouts.errors import RolloutStateError

pytestmark = pytest.mark.rollouts

T = "digits/2/int8/model.onnx"
OLD = "digits/1/int8/model.onnx"


@pytest.mark.parametrize(
    ("devices", "waves", "expected"),
    [
        (200, (1, 10, 50, 100), [2, 20, 100, 200]),
        (1000, (1, 10, 50, 100), [10, 100, 500, 1000]),
        (3, (1, 10, 50, 100), [1, 2, 3]),
        (1, (1, 10, 50, 100), [1]),
        (10, (5, 15, 80), [1, 2, 8, 10]),
    ],
)
def test_plan_waves_gives_each_wave_at_least_one_device(devices, waves, expected) -> None:
    assert plan_waves(devices, RolloutPolicy(waves_pct=waves).waves_pct) == expected


def fleet(n: int, **policy: object) -> RolloutState:
    ids = [f"d{i:03d}" for i in range(n)]
    pol = RolloutPolicy(soak_s=0, device_timeout_s=60, **policy)  # type: ignore[arg-type]
    devices = {a.device_id: a for a in assign_waves(ids, pol.waves_pct)}
    return RolloutState(id=1, target=T, status="running", policy=pol, devices=devices)


def online(release: str = OLD, state: str = "running", at: float = 0.0, **kw: object) -> DeviceObservation:
    return DeviceObservation(online=True, state=state, release=release, target=kw.get("target"),  # type: ignore[arg-type]
                             status_at=at)


def step(rollout: RolloutState, obs: dict[str, DeviceObservation], now: float):
    decision = decide(rollout, obs, now)
    return decision.rollout, decision


def test_healthy_rollout_goes_wave_by_wave_to_completion() -> None:
    rollout = fleet(20)
    obs = {d: online() for d in rollout.devices}
    now = 1.0
    sent_order: list[tuple[str, ...]] = []
    for _ in range(50):
        rollout, decision = step(rollout, obs, now)
        for command in decision.commands:
            assert command.kind == "update"
            sent_order.append(command.device_ids)
            for d in command.device_ids:  # every device commits a moment later
                obs[d] = online(release=T, state="committed", at=now + 0.5, target=T)
        now += 1.0
        if rollout.status == "completed":
            break
    assert rollout.status == "completed"
    assert [len(ids) for ids in sent_order] == [1, 1, 8, 10]
    sent = [d for ids in sent_order for d in ids]
    assert len(sent) == len(set(sent)) == 20  # nobody updated twice


def test_failures_over_threshold_abort_and_roll_back_updated_devices() -> None:
    rollout = fleet(20, failure_threshold_pct=20, failure_min_count=2)
    obs = {d: online() for d in rollout.devices}
    bad = {"d002", "d003", "d004"}
    now, rolled_back_sent = 1.0, set()
    for _ in range(50):
        rollout, decision = step(rollout, obs, now)
        for command in decision.commands:
            for d in command.device_ids:
                if command.kind == "update" and d in bad:
                    obs[d] = online(release=OLD, state="rolled_back", at=now + 0.5, target=T)
                elif command.kind == "update":
                    obs[d] = online(release=T, state="committed", at=now + 0.5, target=T)
                else:
                    rolled_back_sent.add(d)
                    obs[d] = online(release=OLD, state="running", at=now + 0.5, target=T)
        now += 1.0
        if rollout.status == "aborted":
            break
    assert rollout.status == "aborted"
    assert "failed" in (rollout.reason or "")
    updated_ok = {d for d, a in rollout.devices.items() if a.phase == "rolled_back"}
    assert updated_ok == rolled_back_sent and updated_ok  # every committed device rolled back
    assert all(obs[d].release == OLD for d in rollout.devices)
    assert {a.phase for a in rollout.devices.values()} <= {"rolled_back", "failed", "skipped"}


def test_offline_device_catches_up_when_it_returns() -> None:
    rollout = fleet(2, waves_pct=(100,))
    obs = {"d000": online(), "d001": DeviceObservation(online=False, status_at=0)}
    rollout, decision = step(rollout, obs, 1.0)
    assert [c.device_ids for c in decision.commands] == [("d000",)]
    assert rollout.devices["d001"].phase == "waiting"
    obs["d000"] = online(release=T, state="committed", at=1.5)
    rollout, decision = step(rollout, obs, 2.0)
    assert rollout.status == "running"  # d001 may still come back
    obs["d001"] = online(at=3.0)
    rollout, decision = step(rollout, obs, 3.0)
    assert [c.device_ids for c in decision.commands] == [("d001",)]
    obs["d001"] = online(release=T, state="committed", at=3.5)
    rollout, _ = step(rollout, obs, 4.0)
    assert rollout.status == "completed"


def test_device_offline_past_the_timeout_is_reported_missed() -> None:
    rollout = fleet(2, waves_pct=(100,))
    obs = {"d000": online(), "d001": DeviceObservation(online=False, status_at=0)}
    rollout, _ = step(rollout, obs, 1.0)
    obs["d000"] = online(release=T, state="committed", at=1.5)
    rollout, _ = step(rollout, obs, 2.0)
    rollout, _ = step(rollout, obs, 100.0)
    assert rollout.status == "completed"
    assert rollout.devices["d001"].phase == "missed"


def test_stale_failure_report_from_before_the_command_is_ignored() -> None:
    rollout = fleet(1)
    obs = {"d000": online(release=OLD, state="update_failed", at=0.5, target=T)}
    rollout, decision = step(rollout, obs, 1.0)
    assert decision.commands and rollout.devices["d000"].phase == "sent"
    rollout, _ = step(rollout, obs, 2.0)
    assert rollout.devices["d000"].phase == "sent"


def test_silent_device_times_out_and_counts_as_failure() -> None:
    rollout = fleet(1)
    obs = {"d000": online()}
    rollout, _ = step(rollout, obs, 1.0)
    rollout, _ = step(rollout, obs, 62.0)
    assert rollout.devices["d000"].phase == "timed_out"
    assert rollout.status in ("aborting", "aborted")


def test_paused_rollout_sends_nothing_new_and_resumes() -> None:
    rollout = fleet(20)
    obs = {d: online() for d in rollout.devices}
    rollout, decision = step(rollout, obs, 1.0)
    obs["d000"] = online(release=T, state="committed", at=1.5)
    rollout = apply_request(rollout, "pause", "op", 2.0)
    rollout, decision = step(rollout, obs, 3.0)
    assert rollout.status == "paused" and not decision.commands
    with pytest.raises(RolloutStateError):
        apply_request(rollout, "pause", "op", 4.0)
    rollout = apply_request(rollout, "resume", "op", 4.0)
    rollout, decision = step(rollout, obs, 5.0)
    rollout, decision = step(rollout, obs, 6.0)
    assert decision.commands  # the next wave started


def test_manual_abort_rolls_back_and_skips_the_rest() -> None:
    rollout = fleet(20)
    obs = {d: online() for d in rollout.devices}
    rollout, _ = step(rollout, obs, 1.0)
    obs["d000"] = online(release=T, state="committed", at=1.5)
    rollout = apply_request(rollout, "abort", "op", 2.0)
    rollout, decision = step(rollout, obs, 3.0)
    assert [(c.kind, c.device_ids) for c in decision.commands] == [("rollback", ("d000",))]
    obs["d000"] = online(release=OLD, state="running", at=3.5)
    rollout, _ = step(rollout, obs, 4.0)
    assert rollout.status == "aborted"
    assert rollout.devices["d001"].phase == "skipped"
    with pytest.raises(RolloutStateError):
        apply_request(rollout, "resume", "op", 5.0)


def test_device_already_on_the_target_is_not_updated() -> None:
    rollout = fleet(1)
    rollout, decision = step(rollout, {"d000": online(release=T, at=0.1)}, 1.0)
    assert not decision.commands and rollout.devices["d000"].phase == "already"


def test_max_in_flight_holds_a_wave_back_until_devices_settle() -> None:
    rollout = fleet(20, waves_pct=(25, 100), max_in_flight=4)
    obs = {d: online() for d in rollout.devices}
    obs["d010"] = online(release=T, state="committed")  # already there: takes no room
    now, sent_order, in_flight_max = 1.0, [], 0
    for _ in range(60):
        rollout, decision = step(rollout, obs, now)
        in_flight = sum(a.phase == "sent" for a in rollout.devices.values())
        in_flight_max = max(in_flight_max, in_flight)
        for command in decision.commands:
            sent_order.extend(command.device_ids)
            first = command.device_ids[0]  # one device of each batch settles a tick later
            obs[first] = online(release=T, state="committed", at=now + 0.5, target=T)
        # ...and the rest two ticks later
        for d, a in rollout.devices.items():
            if a.phase == "sent" and a.sent_at is not None and now - a.sent_at >= 1.0:
                obs[d] = online(release=T, state="committed", at=now + 0.5, target=T)
        now += 1.0
        if rollout.status == "completed":
            break
    assert rollout.status == "completed"
    assert in_flight_max == 4
    assert len(sent_order) == len(set(sent_order)) == 19  # d010 was already on the target
    assert sent_order == sorted(sent_order)  # in position order, wave 1 before wave 2
    assert rollout.devices["d010"].phase == "already"


def test_max_in_flight_leaves_queued_devices_skipped_on_abort() -> None:
    rollout = fleet(10, waves_pct=(100,), max_in_flight=2, failure_min_count=2,
                    failure_threshold_pct=50)
    obs = {d: online() for d in rollout.devices}
    rollout, decision = step(rollout, obs, 1.0)
    assert [c.device_ids for c in decision.commands] == [("d000", "d001")]
    for d in ("d000", "d001"):
        obs[d] = online(release=OLD, state="rolled_back", at=1.5, target=T)
    rollout, decision = step(rollout, obs, 2.0)
    assert rollout.status in ("aborting", "aborted")
    assert not any(c.kind == "update" for c in decision.commands)
    assert {rollout.devices[f"d{i:03d}"].phase for i in range(2, 10)} == {"skipped"}


@pytest.mark.parametrize("bad", [0, -3])
def test_max_in_flight_below_one_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        RolloutPolicy(max_in_flight=bad)
