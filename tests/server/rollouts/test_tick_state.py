"""What a tick reads and keeps: assignments loaded as plain rows, every write outside
`save_decision` bumping the revision, and the runner reading a rollout again only when
its revision moved (a real SQLite database; the runner against a real Mosquitto)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

import server.rollouts.store as store
from edgeops.messages import DeviceStatus
from server.config.settings import ServerSettings
from server.fleet import inventory
from server.fleet.commands import CommandPublisher
from server.rollouts.controller import Decision, DeviceAssignment, RolloutPolicy
from server.rollouts.runner import RolloutRunner
from server.rollouts.store import RolloutSpec, create_rollout, get_rollout, load_state
from simulations.mosquitto import MosquittoBroker
from tests.server.rollouts.test_released_waves import T, add_release_and_devices

IDS = tuple(f"d{i:03d}" for i in range(10))


@pytest.fixture
def rollout_db(session_factory: sessionmaker) -> tuple[sessionmaker, int]:
    with session_factory.begin() as session:
        add_release_and_devices(session, IDS)
        rollout = create_rollout(session, RolloutSpec(target=T, policy=RolloutPolicy(
            switch="command")), "tester", 100.0)
        return session_factory, rollout.id


def revision(factory: sessionmaker, rollout_id: int) -> int:
    with factory() as session:
        return get_rollout(session, rollout_id).revision


def test_load_state_reads_every_field_in_position_order(
    rollout_db: tuple[sessionmaker, int],
) -> None:
    factory, rollout_id = rollout_db
    written = DeviceAssignment("d003", 1, "rollback_sent", "c-1", 101.0, 102.0, "c-2", 103.0,
                               "why")
    with factory.begin() as session:
        store.write_assignments(session, rollout_id, {"d003": written})

    with factory() as session:
        devices = load_state(session, get_rollout(session, rollout_id)).devices

    assert list(devices) == list(IDS)
    assert devices["d003"] == replace(written, wave=devices["d003"].wave)
    assert devices["d000"] == DeviceAssignment("d000", 0)


def test_bump_revision_refuses_a_decision_computed_before_it(
    rollout_db: tuple[sessionmaker, int],
) -> None:
    factory, rollout_id = rollout_db
    with factory.begin() as session:
        state = load_state(session, get_rollout(session, rollout_id))
        store.bump_revision(session, rollout_id)

    with factory.begin() as session:
        saved = store.save_decision(session, Decision(state), 0, 105.0)

    assert (saved, revision(factory, rollout_id)) == (False, 1)


def test_unswitch_devices_bumps_the_revision(rollout_db: tuple[sessionmaker, int]) -> None:
    factory, rollout_id = rollout_db
    with factory.begin() as session:
        store.write_assignments(session, rollout_id, {
            "d001": DeviceAssignment("d001", 0, "sent", "c-1", 101.0)})

    with factory.begin() as session:
        store.unswitch_devices(session, rollout_id, ["d001"], "not confirmed")

    with factory() as session:
        phase = load_state(session, get_rollout(session, rollout_id)).devices["d001"].phase
    assert (phase, revision(factory, rollout_id)) == ("staged", 1)


@pytest.mark.integration
def test_the_runner_reads_a_rollout_again_once_another_writer_bumped_it(
    rollout_db: tuple[sessionmaker, int], mosquitto: MosquittoBroker, tmp_path: Path,
) -> None:
    factory, rollout_id = rollout_db
    settings = ServerSettings(home=tmp_path, broker_port=mosquitto.port)
    with CommandPublisher(settings) as publisher:
        assert publisher.wait_connected(5)
        runner = RolloutRunner(factory, publisher, clock=lambda: 200.0)
        runner.tick()  # wave 1 (d000) sent, kept at revision 1
        with factory.begin() as session:  # the device reports the target staged
            inventory.apply_status(session, DeviceStatus(
                device_id="d000", online=True, state="staged", release=None, target=T,
                reason="waiting for a switch command"), datetime.fromtimestamp(201.0, UTC))
        runner.tick()  # d000 staged, kept at revision 2
        with factory.begin() as session:  # another writer puts d000 back in the queue
            store.write_assignments(session, rollout_id, {"d000": DeviceAssignment("d000", 0)})
            store.bump_revision(session, rollout_id)
        runner.tick()  # must see "queued" in the table, not its kept "staged": sends again

    with factory() as session:
        device = load_state(session, get_rollout(session, rollout_id)).devices["d000"]
    assert device.phase == "sent"
    assert device.command_id == f"rollout-{rollout_id}-update-200000"
