"""The I/O shell around the rollout controller: tick, persist, then publish.

    runner = RolloutRunner(session_factory, publisher)
    runner.tick()                       # one step of every active rollout
    rollout_lifespan(runner, 0.5)       # a build_app lifespan hook ticking in a thread

Each tick, in one transaction: read every device's last status (and record status changes
as device events: the console's status history), load each active rollout, `decide`, and
write the decision — the per-device assignment and the command id included. Only after the
commit are the commands published, so a server killed at any instant never sends a device
the same rollout's update twice: after a restart the assignment says it was sent.

A command the broker did not confirm is put back (update: the device waits for its next
turn; rollback: it is re-sent next tick), with a new command id.

The runner keeps the state it last decided or saved for each rollout, with the rollout's
revision: every write to a rollout or its assignments bumps the revision, so while the row
still carries that revision the kept state is the stored one, and a tick skips reading
every assignment again (the bulk of a tick at 10,000 devices). The kept state is taken
only once its transaction committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import EdgeOpsError
from edgeops.messages import Command
from server.background.periodic import LifespanHook, periodic
from server.db.tables import DeviceEvent, Rollout
from server.fleet.commands import CommandDeliveryError, CommandPublisher
from server.governance import audit_chain
from server.rollouts import store
from server.rollouts.controller import (
    ACTIVE_STATUSES,
    CommandAction,
    DeviceObservation,
    RolloutState,
    decide,
)

__all__ = ["RolloutRunner", "RunnerStats", "rollout_lifespan", "switch_now"]

logger = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.5
ACTOR = "rollout-controller"  # who the audit log names for the controller's own decisions
_Snapshot = tuple[bool, str | None, str | None, str | None, str | None]


@dataclass
class RunnerStats:
    """Counters since this process started (exported at /metrics)."""

    ticks: int = 0
    tick_errors: int = 0
    commands_sent: dict[str, int] = field(default_factory=lambda: {"update": 0, "rollback": 0})
    commands_failed: int = 0
    rollouts_finished: dict[str, int] = field(
        default_factory=lambda: {"completed": 0, "aborted": 0}
    )
    last_tick_s: float = 0.0


class RolloutRunner:
    """Ticks every active rollout: decide, persist, publish."""

    def __init__(
        self,
        session_factory: sessionmaker,
        publisher: CommandPublisher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session_factory = session_factory
        self._publisher = publisher
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, _Snapshot] | None = None
        self._states: dict[int, tuple[int, RolloutState]] = {}  # id -> (revision, state)
        self.stats = RunnerStats()

    def tick(self) -> int:
        """One step of every active rollout; returns how many commands were published."""
        if not self._publisher.wait_connected(0):
            return 0  # nothing can be acted on; decide again once the broker is back
        with self._lock:
            started = time.perf_counter()
            now = self._clock()
            kept: dict[int, tuple[int, RolloutState]] = {}
            try:
                with self._session_factory.begin() as session:
                    observations = store.observe_devices(session)
                    self._record_history(session, observations, now)
                    commands = self._decide_all(session, observations, now, kept)
            except BaseException:
                self._states.clear()
                raise
            self._states = kept  # committed: finished rollouts drop out
            sent = sum(self._publish(action, now) for action in commands)
            self.stats.ticks += 1
            self.stats.last_tick_s = time.perf_counter() - started
            return sent

    # One transaction -------------------------------------------------------------------

    def _decide_all(
        self,
        session: Session,
        observations: dict[str, DeviceObservation],
        now: float,
        kept: dict[int, tuple[int, RolloutState]],
    ) -> list[tuple[int, CommandAction]]:
        """Decide and save every active rollout; `kept` receives each one's state as saved
        (or as read, when nothing changed) with its revision."""
        commands: list[tuple[int, CommandAction]] = []
        active = session.scalars(
            select(Rollout).where(Rollout.status.in_(sorted(ACTIVE_STATUSES))).order_by(Rollout.id)
        ).all()
        for rollout in active:
            state = self._state_of(session, rollout)
            decision = decide(state, observations, now)
            unchanged = not decision.changed and replace(
                decision.rollout, devices=state.devices
            ) == state
            if unchanged:
                kept[rollout.id] = (rollout.revision, state)
                continue
            if not store.save_decision(session, decision, rollout.revision, now):
                logger.info("rollout %d changed during the tick; deciding again next tick",
                            rollout.id)
                continue
            kept[rollout.id] = (rollout.revision + 1, decision.rollout)
            for event in decision.events:
                logger.info("rollout %d (%s): %s", rollout.id, rollout.target, event,
                            extra={"rollout_id": rollout.id, "release": rollout.target})
                audit_chain.append(session, actor=ACTOR, role=None, action="rollout.decision",
                                   resource="rollout", target=f"rollout {rollout.id}",
                                   reason=f"{rollout.target}: {event}")
            if decision.rollout.status in ("completed", "aborted"):
                self.stats.rollouts_finished[decision.rollout.status] += 1
            commands.extend((rollout.id, action) for action in decision.commands)
        return commands

    def _state_of(self, session: Session, rollout: Rollout) -> RolloutState:
        """The state kept from the last tick if the row still has its revision, else read."""
        revision, state = self._states.get(rollout.id, (None, None))
        if state is not None and revision == rollout.revision:
            return state
        return store.load_state(session, rollout)

    def _record_history(
        self, session: Session, observations: dict[str, DeviceObservation], now: float
    ) -> None:
        current = {
            device_id: (obs.online, obs.state, obs.release, obs.target, obs.reason)
            for device_id, obs in observations.items()
        }
        previous, self._seen = self._seen, current
        if previous is None:
            return  # first tick of this process: nothing to compare with yet
        stamp = datetime.fromtimestamp(now, UTC)
        rows = [
            {"device_id": device_id, "at": stamp, "online": snap[0], "state": snap[1],
             "release": snap[2], "target": snap[3], "reason": snap[4]}
            for device_id, snap in current.items()
            if previous.get(device_id) != snap
        ]
        if rows:
            session.execute(DeviceEvent.__table__.insert(), rows)  # type: ignore[attr-defined]

    # After the commit ------------------------------------------------------------------

    def _publish(self, item: tuple[int, CommandAction], now: float) -> int:
        rollout_id, action = item
        command = _command(action, now)
        try:
            self._publisher.send_many(action.device_ids, command)
        except CommandDeliveryError as err:
            logger.warning("rollout %d: %s", rollout_id, err)
            self.stats.commands_failed += len(err.failed)
            self._put_back(rollout_id, action, err.failed)
            delivered = len(err.delivered)
        except EdgeOpsError as err:  # a bad topic: nothing was sent
            logger.error("rollout %d: %s not sent: %s", rollout_id, action.kind, err)
            self.stats.commands_failed += len(action.device_ids)
            self._put_back(rollout_id, action, list(action.device_ids))
            delivered = 0
        else:
            delivered = len(action.device_ids)
        self.stats.commands_sent[action.kind] += delivered
        return delivered

    def _put_back(self, rollout_id: int, action: CommandAction, device_ids: list[str]) -> None:
        with self._session_factory.begin() as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None:
                return
            state = store.load_state(session, rollout)
            reason = f"{action.kind} not confirmed by the broker; will retry"
            changed = {
                d: replace(state.devices[d], phase="waiting", command_id=None, sent_at=None,
                           reason=reason)
                if action.kind == "update"
                else replace(state.devices[d], phase="succeeded", reason=reason)
                for d in device_ids
                if d in state.devices
            }
            store.write_assignments(session, rollout_id, changed)
            store.bump_revision(session, rollout_id)


def _command(action: CommandAction, now: float) -> Command:
    return Command(command_id=action.command_id, kind=action.kind, target=action.target,
                   issued_at=now, switch=action.switch, switch_window=action.switch_window)


def switch_now(
    session_factory: sessionmaker,
    publisher: CommandPublisher,
    rollout_id: int,
    device_ids: list[str] | None,
    actor: str,
    *,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """The operator's "switch now" for a rollout's staged devices (all, or `device_ids`):
    commit them as `sent`, then publish `switch`; returns the devices switched. Devices the
    broker did not confirm go back to `staged` and CommandDeliveryError is raised."""
    now = clock()
    decision = store.switch_devices(session_factory, rollout_id, device_ids, actor, now)
    switched: list[str] = []
    for action in decision.commands:
        try:
            publisher.send_many(action.device_ids, _command(action, now))
        except CommandDeliveryError as err:
            with session_factory.begin() as session:
                store.unswitch_devices(session, rollout_id, err.failed,
                                       "switch not confirmed by the broker; switch again")
            raise
        switched.extend(action.device_ids)
    logger.info("rollout %d: switch sent to %d staged devices by %s", rollout_id,
                len(switched), actor, extra={"rollout_id": rollout_id})
    return switched


def rollout_lifespan(runner: RolloutRunner, interval_s: float = DEFAULT_TICK_S) -> LifespanHook:
    """A lifespan hook ticking `runner` every `interval_s` (and exposing it on app.state)."""

    def count_error(_err: Exception) -> None:
        runner.stats.tick_errors += 1

    ticking = periodic("rollout-runner", runner.tick, interval_s, on_error=count_error)

    @asynccontextmanager
    async def hook(app: Any) -> AsyncIterator[None]:
        app.state.rollout_runner = runner
        async with ticking(app):
            yield

    return hook
