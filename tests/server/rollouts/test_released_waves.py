"""The wave gate: a rollout with `released_waves` holds, soaked, after that many waves until
`release_waves` lets the next one start (a pipeline's canary judges each step first).

The controller part is pure (`decide` over a scenario); the store part runs on a migrated
SQLite database: the count never goes down, each release bumps the revision, and
`RolloutSpec.order` decides which devices the first waves take. An operator's request that a
runner tick overtakes (both bump the revision) is read again and applied to the new state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

import server.rollouts.store as store
from edgeops.errors import ConfigError
from edgeops.messages import DeviceStatus
from server.db.tables import Artifact, DeviceLabel, Model, ModelVersion, Release
from server.fleet import inventory
from server.rollouts.controller import (
    CommandAction,
    DeviceObservation,
    RolloutPolicy,
    RolloutState,
    assign_waves,
    decide,
)
from server.rollouts.errors import RolloutChangedError, RolloutConflictError, RolloutStateError
from server.rollouts.store import (
    RolloutSpec,
    assignments,
    create_rollout,
    get_rollout,
    load_state,
    operator_request,
    release_waves,
    request,
)

pytestmark = pytest.mark.rollouts

T = "digits/2/int8/model.onnx"
OLD = "digits/1/int8/model.onnx"
SOAK_S = 10.0
IDS = ("d000", "d001", "d002", "d003")  # waves (50, 100): d000 d001 | d002 d003


# The pure controller --------------------------------------------------------------------


def rollout(released_waves: int | None) -> RolloutState:
    policy = RolloutPolicy(waves_pct=(50.0, 100.0), soak_s=SOAK_S, device_timeout_s=60.0)
    devices = {a.device_id: a for a in assign_waves(IDS, policy.waves_pct)}
    return RolloutState(id=1, target=T, status="running", policy=policy, devices=devices,
                        released_waves=released_waves)


def running(release: str = OLD, at: float = 0.0) -> DeviceObservation:
    state = "committed" if release == T else "running"
    return DeviceObservation(online=True, state=state, release=release, target=T, status_at=at)


class Fleet:
    """Devices that commit every update half a second after it is sent."""

    def __init__(self, state: RolloutState) -> None:
        self.state = state
        self.obs = {d: running() for d in IDS}
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    def tick(self, now: float) -> list[CommandAction]:
        decision = decide(self.state, self.obs, now)
        self.state = decision.rollout
        for command in decision.commands:
            if command.kind != "update":
                continue
            self.sent.append((now, command.device_ids))
            for device_id in command.device_ids:
                self.obs[device_id] = running(T, at=now + 0.5)
        return list(decision.commands)

    def first_wave_soaked(self) -> None:
        """Wave 1 sent at 1, committed, passed at 2, soaked by 2 + SOAK_S."""
        assert [c.device_ids for c in self.tick(1.0)] == [("d000", "d001")]
        assert self.tick(2.0) == []
        assert self.state.soak_started_at == 2.0


def test_held_after_the_released_waves_until_more_are_released() -> None:
    fleet = Fleet(rollout(released_waves=1))
    fleet.first_wave_soaked()
    for now in (2.0 + SOAK_S, 50.0, 500.0, 5000.0):  # soaked, and far past the timeouts
        assert fleet.tick(now) == []
        assert (fleet.state.status, fleet.state.current_wave) == ("running", 0)
    assert {fleet.state.devices[d].phase for d in ("d002", "d003")} == {"queued"}

    fleet.state = replace(fleet.state, released_waves=2)
    assert [c.device_ids for c in fleet.tick(5001.0)] == [("d002", "d003")]
    assert (fleet.state.current_wave, fleet.state.wave_started_at) == (1, 5001.0)
    fleet.tick(5002.0)
    fleet.tick(5002.0 + SOAK_S)
    assert fleet.state.status == "completed"


def test_a_released_wave_still_waits_for_the_soak() -> None:
    fleet = Fleet(rollout(released_waves=2))
    fleet.first_wave_soaked()
    assert fleet.tick(2.0 + SOAK_S - 0.1) == []
    assert [c.device_ids for c in fleet.tick(2.0 + SOAK_S)] == [("d002", "d003")]


@pytest.mark.parametrize("released_waves", [2, 5])
def test_releasing_every_wave_behaves_as_no_gate(released_waves: int) -> None:
    ungated, gated = Fleet(rollout(None)), Fleet(rollout(released_waves))
    for now in (1.0, 2.0, 12.0, 13.0, 23.0):
        ungated.tick(now)
        gated.tick(now)
    assert ungated.sent == gated.sent == [(1.0, ("d000", "d001")), (12.0, ("d002", "d003"))]
    assert ungated.state.status == gated.state.status == "completed"
    assert replace(gated.state, released_waves=None) == ungated.state


def test_no_gate_starts_the_next_wave_once_soaked() -> None:
    fleet = Fleet(rollout(None))
    fleet.first_wave_soaked()
    assert [c.device_ids for c in fleet.tick(2.0 + SOAK_S)] == [("d002", "d003")]


def test_a_held_rollout_still_aborts_on_failures() -> None:
    fleet = Fleet(rollout(released_waves=1))
    fleet.first_wave_soaked()
    fleet.tick(20.0)
    fleet.obs["d000"] = DeviceObservation(online=True, state="rolled_back", release=OLD,
                                          target=T, status_at=21.0)
    commands = fleet.tick(22.0)
    assert fleet.state.status == "aborting"
    assert [(c.kind, c.device_ids) for c in commands] == [("rollback", ("d001",))]
    assert fleet.state.devices["d000"].phase == "failed"
    assert {fleet.state.devices[d].phase for d in ("d002", "d003")} == {"skipped"}


def test_a_held_rollout_still_catches_up_devices_of_its_released_wave() -> None:
    fleet = Fleet(rollout(released_waves=1))
    fleet.obs["d001"] = DeviceObservation(online=False, status_at=0.0)
    assert [c.device_ids for c in fleet.tick(1.0)] == [("d000",)]
    fleet.tick(2.0)
    fleet.obs["d001"] = running(at=3.0)
    assert [c.device_ids for c in fleet.tick(3.0)] == [("d001",)]
    assert fleet.state.current_wave == 0


# The store ------------------------------------------------------------------------------


def add_release_and_devices(session: Session, ids: tuple[str, ...]) -> None:
    session.add(Artifact(sha256="a" * 64, size_bytes=1))
    model = Model(name="digits", task="edgeops.tasks.digits:digits")
    session.add(model)
    session.flush()
    version = ModelVersion(model_id=model.id, version=2, format="int8",
                           artifact_sha256="a" * 64, size_bytes=1)
    session.add(version)
    session.flush()
    session.add(Release(model_version_id=version.id, target_path=T, targets_version=1))
    now = datetime.now(UTC)
    for device_id in ids:
        inventory.apply_status(
            session, DeviceStatus(device_id=device_id, online=True, state="running",
                                  release=OLD), now)
    session.flush()


@pytest.fixture
def fleet_db(session_factory: sessionmaker) -> sessionmaker:
    """A release at T and ten devices d000..d009 (d008 and d009 in group "lab")."""
    ids = tuple(f"d{i:03d}" for i in range(10))
    with session_factory.begin() as session:
        add_release_and_devices(session, ids)
        session.add_all([DeviceLabel(device_id=d, group_name="lab") for d in ("d008", "d009")])
    return session_factory


def new_rollout(factory: sessionmaker, **spec: object) -> int:
    with factory.begin() as session:
        return create_rollout(session, RolloutSpec(target=T, **spec), "tester", 100.0).id  # type: ignore[arg-type]


def gate(factory: sessionmaker, rollout_id: int) -> tuple[int | None, int]:
    with factory() as session:
        row = get_rollout(session, rollout_id)
        return row.released_waves, row.revision


def test_the_released_count_is_stored_and_loaded(fleet_db: sessionmaker) -> None:
    held = new_rollout(fleet_db, released_waves=1, group="lab")
    free = new_rollout(fleet_db, group="default")
    with fleet_db() as session:
        assert load_state(session, get_rollout(session, held)).released_waves == 1
        assert load_state(session, get_rollout(session, free)).released_waves is None


def test_release_waves_raises_the_count_and_bumps_the_revision(fleet_db: sessionmaker) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=1)
    with fleet_db.begin() as session:
        release_waves(session, rollout_id, 2, 110.0)
        row = get_rollout(session, rollout_id)
        assert (row.released_waves, row.revision) == (2, 1)  # the caller sees the new values
    with fleet_db.begin() as session:
        release_waves(session, rollout_id, 4, 120.0)
    assert gate(fleet_db, rollout_id) == (4, 2)


@pytest.mark.parametrize("count", [0, -1])
def test_release_waves_refuses_a_count_below_one(fleet_db: sessionmaker, count: int) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=2)
    with fleet_db.begin() as session, pytest.raises(ConfigError, match="at least 1 wave"):
        release_waves(session, rollout_id, count, 110.0)
    assert gate(fleet_db, rollout_id) == (2, 0)


@pytest.mark.parametrize("count", [4, 3, 1])
def test_release_waves_never_lowers_the_count(fleet_db: sessionmaker, count: int) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=4)
    with fleet_db.begin() as session:
        release_waves(session, rollout_id, count, 110.0)
    assert gate(fleet_db, rollout_id) == (4, 0)  # nothing written, revision unchanged


def test_release_waves_does_not_hold_a_rollout_without_a_gate(fleet_db: sessionmaker) -> None:
    rollout_id = new_rollout(fleet_db)
    with fleet_db.begin() as session:
        release_waves(session, rollout_id, 1, 110.0)
    assert gate(fleet_db, rollout_id) == (None, 0)


def test_release_waves_on_a_rollout_changed_meanwhile_is_a_conflict(
    fleet_db: sessionmaker,
) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=1)
    with fleet_db() as stale:
        loaded = get_rollout(stale, rollout_id)  # kept in the identity map at revision 0
        with fleet_db.begin() as other:
            request(other, rollout_id, "pause", "operator", 105.0)
        with pytest.raises(RolloutConflictError, match=f"rollout {rollout_id} changed"):
            release_waves(stale, rollout_id, 2, 110.0)
        assert loaded.revision == 0
    assert gate(fleet_db, rollout_id) == (1, 1)


def overtaken_by(factory: sessionmaker, monkeypatch: pytest.MonkeyPatch, what: str,
                 times: int) -> None:
    """The next `times` operator requests each read the rollout, then another writer (a
    tick) lands `what` before they write."""
    real_apply = store.apply_request
    left = [times]

    def apply_then_overtaken(state: RolloutState, *args: object) -> RolloutState:
        if left[0] > 0:
            left[0] -= 1
            with factory.begin() as other:
                if what == "bump":  # any write bumps the revision; one more wave is one
                    released = get_rollout(other, state.id).released_waves or 0
                    release_waves(other, state.id, released + 1, 105.0)
                else:
                    request(other, state.id, what, "someone", 105.0)  # type: ignore[arg-type]
        return real_apply(state, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "apply_request", apply_then_overtaken)


def test_an_operator_request_overtaken_by_a_tick_is_applied_to_the_new_state(
    fleet_db: sessionmaker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=1)
    overtaken_by(fleet_db, monkeypatch, "bump", times=2)
    operator_request(fleet_db, rollout_id, "abort", "operator")
    with fleet_db() as session:
        row = get_rollout(session, rollout_id)
        assert (row.status, row.released_waves, row.revision) == ("aborting", 3, 3)


def test_an_operator_request_the_new_state_forbids_is_refused_by_state(
    fleet_db: sessionmaker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rollout_id = new_rollout(fleet_db)
    overtaken_by(fleet_db, monkeypatch, "abort", times=1)
    with pytest.raises(RolloutStateError, match="cannot pause .* it is aborting"):
        operator_request(fleet_db, rollout_id, "pause", "operator")


def test_an_operator_request_overtaken_every_time_gives_up_with_a_conflict(
    fleet_db: sessionmaker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rollout_id = new_rollout(fleet_db, released_waves=1)
    overtaken_by(fleet_db, monkeypatch, "bump", times=3)
    with pytest.raises(RolloutChangedError, match=f"rollout {rollout_id} changed meanwhile"):
        operator_request(fleet_db, rollout_id, "abort", "operator", attempts=3)
    assert gate(fleet_db, rollout_id) == (4, 3)  # only the other writer's changes


def test_order_puts_the_named_devices_first(fleet_db: sessionmaker) -> None:
    rollout_id = new_rollout(fleet_db, order=("d007", "d003"),
                             policy=RolloutPolicy(waves_pct=(20.0, 100.0)))
    with fleet_db() as session:
        rows = assignments(session, rollout_id)
    assert [r.device_id for r in rows] == [
        "d007", "d003", "d000", "d001", "d002", "d004", "d005", "d006", "d008", "d009"]
    assert [r.device_id for r in rows if r.wave == 0] == ["d007", "d003"]


def test_order_within_a_group(fleet_db: sessionmaker) -> None:
    rollout_id = new_rollout(fleet_db, group="lab", order=("d009",))
    with fleet_db() as session:
        assert [r.device_id for r in assignments(session, rollout_id)] == ["d009", "d008"]


@pytest.mark.parametrize(("spec", "named"), [
    ({"order": ("d001", "ghost")}, "['ghost']"),
    ({"order": ("d001", "d002", "d001")}, "duplicates"),
    ({"group": "lab", "order": ("d008", "d001")}, "['d001']"),  # exists, but not selected
])
def test_order_refuses_unknown_and_duplicate_ids(
    fleet_db: sessionmaker, spec: dict[str, object], named: str,
) -> None:
    with fleet_db() as session:
        with pytest.raises(ConfigError, match="device order") as caught:
            create_rollout(session, RolloutSpec(target=T, **spec), "tester", 100.0)  # type: ignore[arg-type]
        assert str(caught.value).endswith(named)
