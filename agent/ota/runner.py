"""The I/O shell around the update state machine: save, report, act, feed back the outcome.

For every state it enters, `UpdateRunner`:

1. saves the record to `<home>/update_state.json` (atomically) — before anything else,
2. reports it (the daemon publishes the retained status: state, target, reason),
3. performs the step the state names (`_STEPS`), and
4. turns the outcome into an event for `update_machine.transition`.

The health window is not a blocking step: the daemon's worker calls `tick()` on a timer
and the pure `health.judge` decides from the statistics whether to wait, commit or roll
back. On start, `resume()` maps a saved record to the step to redo (`update_machine.recover`).

Neither is a hold in `staged` (download now, switch later): once the staged step passed
— the slot verified and, since it will wait, the release smoke-tested once so a release
that cannot run fails now rather than in its window — the runner saves the record with
the hold (`machine.begin_hold`) and returns. `tick()` asks the clock and the pure
`machine.holds` whether the window is open; `switch_now()` (a `switch` command) releases
the hold; `cancel()` (a rollback before the switch) fails it. The smoke test runs again
right before the switch: its runtime is not kept in memory while waiting, and the previous
model's health baseline must be recorded just before the switch.

Fault points (`<state>:enter`, `<state>:exit`, `mid_download`, `mid_stage`, `mid_switch`,
`mid_rollback`, `health_window:tick`, `staged:hold`) call the `fault` hook; the CLI passes one that
SIGKILLs the process at the point named in `fault_point`, so tests can kill the agent at
every step of an update.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agent.config import AgentConfig
from agent.ota.health import HealthSampler, HealthStats, judge, resolve_policy
from agent.ota.journal import UpdateJournal
from agent.ota.machine import (
    Event,
    UpdateRecord,
    begin_hold,
    holds,
    new_update,
    recover,
    release_hold,
    transition,
)
from agent.ota.model_store import ModelStore, SlotName, SlotRecord, other_slot
from agent.ota.updater import InstalledModel, Lookup, ReleaseUpdater
from agent.runtime import ModelRuntime
from edgeops.errors import EdgeOpsError, UpdateError
from edgeops.schemas import HealthPolicy
from edgeops.switch_window import SwitchWindow
from edgeops.update_states import SwitchMode

__all__ = ["FaultHook", "UpdateRunner", "kill_at"]

logger = logging.getLogger(__name__)

FaultHook = Callable[[str], None]
ReportHook = Callable[[UpdateRecord, float | None], None]
ServeHook = Callable[[InstalledModel], None]
PROGRESS_STEP = 0.1  # report download progress every 10 %
HOLD_TICK_S = 1.0  # how often a window hold looks at the clock (clocks may jump)


def kill_at(point: str | None) -> FaultHook:
    """A fault hook that SIGKILLs this process when it reaches `point` (None: never)."""

    def fault(name: str) -> None:
        if point is not None and name == point:
            logger.warning("fault injection: SIGKILL at %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def _no_fault(name: str) -> None:
    return None


class UpdateRunner:
    """Drives updates of one agent home. Callers serialize calls (the daemon's command lock)."""

    def __init__(
        self,
        config: AgentConfig,
        store: ModelStore,
        updater: ReleaseUpdater,
        sampler: HealthSampler,
        *,
        serve: ServeHook,
        report: ReportHook,
        clock: Callable[[], float] = time.time,
        fault: FaultHook = _no_fault,
    ) -> None:
        self._config = config
        self._store = store
        self._updater = updater
        self._sampler = sampler
        self._serve = serve
        self._report = report
        self._clock = clock
        self._fault = fault
        self._journal = UpdateJournal(config.home)
        self.record: UpdateRecord | None = self._journal.load()
        self._found: Lookup | None = None
        self._downloaded: Path | None = None
        self._runtime: ModelRuntime | None = None
        self._recovering = False
        self._last_progress = -1.0
        self._policy: tuple[object, HealthPolicy] | None = None
        self._holding = False  # this process stopped in `staged`, waiting to switch

    # Public ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """An update is in progress (not yet committed, failed or rolled back)."""
        return self.record is not None and not self.record.terminal

    @property
    def in_health_window(self) -> bool:
        return self.record is not None and self.record.state == "health_window"

    @property
    def holding(self) -> bool:
        """The update is staged and waits for its window or a switch command."""
        return self._holding and self.record is not None and self.record.state == "staged"

    def policy(self) -> HealthPolicy:
        """The health policy of the update in progress (release's, with local overrides)."""
        key = None if self.record is None else (self.record.slot, self.record.target)
        if self._policy is None or self._policy[0] != key:
            release = None
            if self.record is not None:
                try:
                    slot = self._store.read_slot(self.record.slot, verify=False)  # type: ignore[arg-type]
                    release = slot.release.health
                except UpdateError:
                    release = None
            policy = resolve_policy(
                release, self._config.health_window_s, self._config.health_min_samples
            )
            self._policy = (key, policy)
        return self._policy[1]

    def rollback_active(self, reason: str) -> bool:
        """Roll back the update in progress, or the committed model to the previous slot.

        An update staged and waiting to switch is cancelled instead (nothing switched yet).
        False if there is nothing to roll back to."""
        if self.busy:
            if self.record is not None and self.record.state == "staged":
                return self.cancel(f"cancelled before the switch: {reason}")
            return self.request_rollback(reason)
        try:
            pointer = self._store.active_pointer()
        except UpdateError:
            return False
        if pointer is None or pointer.previous is None:
            return False
        now = self._clock()
        self._recovering = False
        self._enter(
            UpdateRecord(
                target=pointer.target,
                state="rolling_back",
                slot=pointer.slot,
                previous_slot=pointer.previous,
                previous_target=None,
                started_at=now,
                updated_at=now,
                reason=reason,
                history=(("rolling_back", now),),
            )
        )
        return True

    def seconds_until_tick(self) -> float | None:
        """How long the worker may sleep before `tick()` is due (None: nothing to tick)."""
        record = self.record
        if self.holding and record is not None and record.switch_window is not None:
            until = SwitchWindow.parse(record.switch_window).seconds_until_open(self._clock())
            return max(0.02, min(HOLD_TICK_S, until))
        if not self.in_health_window:
            return None
        return max(0.02, min(1.0, self.policy().window_s / 10))

    def resume(self) -> None:
        """After a restart: continue the saved update from where it may have stopped."""
        if self.record is None or self.record.terminal:
            return
        recovered = recover(
            self.record,
            self._clock(),
            max_attempts=self._config.update_max_attempts,
            max_boots=self._config.update_max_boots,
        )
        logger.warning(
            "device %s: resuming the update of %s: saved in %s, continuing in %s",
            self._config.device_id,
            recovered.target,
            self.record.state,
            recovered.state,
        )
        if recovered.state == "health_window":
            self._sampler.reset()
        self._recovering = True
        self._enter(recovered)

    def start(
        self,
        target: str,
        *,
        allow_downgrade: bool = False,
        switch: SwitchMode = "now",
        switch_window: str | None = None,
    ) -> None:
        """Begin the update to `target` and run it up to the health window (or its end), or
        with `switch` "window" / "command" up to its hold in `staged`.

        A release older than the active one fails the update unless `allow_downgrade`."""
        if self.busy:
            assert self.record is not None
            raise UpdateError(
                f"update of {self.record.target} is in progress ({self.record.state})"
            )
        try:
            pointer = self._store.active_pointer()
        except UpdateError:
            pointer = None
        slot: SlotName = "a" if pointer is None else other_slot(pointer.slot)
        record = new_update(
            target,
            slot,
            pointer.slot if pointer else None,
            pointer.target if pointer else None,
            self._clock(),
            allow_downgrade=allow_downgrade,
            switch=switch,
            switch_window=switch_window,
        )
        self._found = self._downloaded = self._runtime = None
        self._recovering = False
        self._enter(record)

    def tick(self) -> None:
        """Switch a held update once its window opened; judge the health window, commit or
        roll back once it has decided."""
        record = self.record
        if record is not None and self.holding:
            if holds(record, self._clock()):
                return
            logger.info("device %s: switch window %s UTC is open: switching to %s",
                        self._config.device_id, record.switch_window, record.target)
            self._holding = False
            self._advance("ok", None)
            return
        if record is None or record.state != "health_window":
            return
        window = self._sampler.stats()
        if window.calls:
            self._fault("health_window:tick")
        if record.previous_slot is None:
            self._advance("healthy", "first model on this device: nothing to roll back to")
            return
        baseline = HealthStats.from_json(record.baseline) if record.baseline else None
        elapsed = self._clock() - (record.health_started_at or record.updated_at)
        verdict = judge(baseline, window, self.policy(), elapsed)
        if verdict.decision == "wait":
            return
        self._fault("health_window:exit")
        logger.info(
            "device %s: health window of %s: %s (%s; before: %s)",
            self._config.device_id,
            record.target,
            verdict.decision,
            window.describe(),
            baseline.describe() if baseline else "no baseline",
        )
        self._advance(verdict.decision, verdict.reason)

    def switch_now(self, target: str) -> bool:
        """A `switch` command: release the hold of the update to `target` (switch now if it
        is staged and waiting, else as soon as it is staged). False if no such update."""
        record = self.record
        if record is None or record.terminal or record.target != target:
            return False
        if record.state not in ("downloading", "verifying", "staged"):
            return record.switch == "now"  # already switching or switched
        released = release_hold(record, self._clock())
        if not self.holding:
            self._journal.save(released)  # a restart (or the step under way) goes on
            self.record = released
            return True
        self._holding = False
        logger.info("device %s: switch command: switching to %s", self._config.device_id, target)
        self._enter(transition(released, "ok", self._clock()))
        return True

    def cancel(self, reason: str) -> bool:
        """Give up the update staged and waiting to switch (update_failed with `reason`);
        False if none waits. Nothing switched: the active model keeps serving."""
        if self.record is None or self.record.state != "staged":
            return False
        self._holding = False
        self._advance("fail", reason)
        return True

    def request_rollback(self, reason: str) -> bool:
        """Roll back the update in its health window; False if there is none to roll back."""
        if self.record is None or self.record.state not in ("health_window", "switching"):
            return False
        self._advance("rollback", reason)
        return True

    # The machine -------------------------------------------------------------------

    def _enter(self, record: UpdateRecord) -> None:
        """Save, report, then run steps until a terminal state, the health window or a hold."""
        self._holding = False
        while True:
            self._journal.save(record)  # before any side effect of this state
            self.record = record
            self._report(record, None)
            self._fault(f"{record.state}:enter")
            if record.state == "health_window" or record.terminal:
                if record.terminal:
                    self._cleanup(record)
                return
            event, reason, changes = self._run_step(record)
            if event == "ok" and holds(record, self._clock()):
                self._hold(record)
                return
            self._fault(f"{record.state}:exit")
            record = transition(record, event, self._clock(), reason, **changes)

    def _hold(self, record: UpdateRecord) -> None:
        """Save and report the staged update as waiting; `tick` or `switch_now` goes on."""
        record = begin_hold(record, self._clock())
        self._journal.save(record)
        self.record = record
        self._holding = True
        self._runtime = None
        self._report(record, None)
        logger.info("device %s: %s is staged and waits (%s)",
                    self._config.device_id, record.target, record.reason)
        self._fault("staged:hold")

    def _advance(self, event: Event, reason: str | None) -> None:
        assert self.record is not None
        self._enter(transition(self.record, event, self._clock(), reason))

    def _run_step(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        """Do what `record.state` names; map a refusal to the `fail` event with its reason."""
        step = getattr(self, f"_step_{record.state}")
        try:
            return step(record)
        except EdgeOpsError as err:
            logger.warning("device %s: %s of %s failed: %s", self._config.device_id, record.state, record.target, err)
            return "fail", str(err), {}
        except Exception as err:  # a bug must not leave the update half-way
            logger.exception("device %s: %s crashed", self._config.device_id, record.state)
            return "fail", f"internal error in {record.state}: {type(err).__name__}: {err}", {}

    def _step_downloading(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        self._last_progress = -1.0
        found = self._updater.lookup(
            record.target, self._progress, allow_downgrade=record.allow_downgrade
        )
        if found.info.path != record.target:
            raise UpdateError(f"repository answered {found.info.path} for {record.target}")
        self._downloaded = self._updater.download(found, record.slot)  # type: ignore[arg-type]
        self._found = found
        return "ok", None, {}

    def _step_verifying(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        if self._found is None or self._downloaded is None:
            raise UpdateError("nothing downloaded to verify")  # recovery goes via downloading
        self._updater.stage(self._found, self._downloaded, record.slot)  # type: ignore[arg-type]
        return "ok", None, {}

    def _staged_record(self, record: UpdateRecord, *, verify: bool) -> SlotRecord:
        staged = self._store.read_slot(record.slot, verify=verify)  # type: ignore[arg-type]
        if staged.target != record.target:
            raise UpdateError(f"slot {record.slot} holds {staged.target}, not {record.target}")
        return staged

    def _step_staged(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        staged = self._staged_record(record, verify=self._recovering)
        if holds(record, self._clock()):
            # It will wait: refuse a release that cannot run now, not in its window. The
            # runtime is dropped; the smoke test before the switch loads it again.
            self._updater.smoke_test(staged)
        return "ok", None, {}

    def _step_smoke_testing(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        self._runtime = self._updater.smoke_test(self._staged_record(record, verify=self._recovering))
        # The previous model's behaviour, saved with the next state before the switch.
        return "ok", None, {"baseline": self._sampler.stats().to_json()}

    def _step_switching(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        staged = self._staged_record(record, verify=self._runtime is None)
        runtime = self._runtime or self._updater.smoke_test(staged)
        self._store.activate(staged.slot, previous=record.previous_slot)  # type: ignore[arg-type]
        self._fault("mid_switch")
        self._sampler.reset()
        self._serve(InstalledModel(record=staged, runtime=runtime))
        self._runtime = None
        logger.info("device %s: switched to %s in slot %s", self._config.device_id, record.target, staged.slot)
        return "ok", None, {}

    def _step_rolling_back(self, record: UpdateRecord) -> tuple[Event, str | None, dict]:
        if record.previous_slot is None:
            raise UpdateError(f"rollback failed: no previous model ({record.reason})")
        try:
            previous = self._store.read_slot(record.previous_slot)  # type: ignore[arg-type]
            runtime = self._updater.smoke_test(previous)
        except EdgeOpsError as err:
            raise UpdateError(f"rollback failed: {err} (after: {record.reason})") from err
        self._store.activate(previous.slot, keep_previous=False)
        self._fault("mid_rollback")
        self._sampler.reset()
        self._serve(InstalledModel(record=previous, runtime=runtime))
        logger.warning(
            "device %s: rolled back from %s to %s: %s",
            self._config.device_id,
            record.target,
            previous.target,
            record.reason,
        )
        return "ok", record.reason, {}

    def _cleanup(self, record: UpdateRecord) -> None:
        """Drop leftovers of a finished update (never a slot that may serve)."""
        self._found = self._downloaded = self._runtime = None
        try:
            self._store.incoming_path(record.slot).unlink(missing_ok=True)  # type: ignore[arg-type]
        except OSError as err:
            logger.warning("device %s: cleanup failed: %s", self._config.device_id, err)

    def _progress(self, received: int, expected: int) -> None:
        if self.record is None or expected <= 0:
            return
        fraction = min(1.0, received / expected)
        if fraction >= 1.0 or fraction - self._last_progress >= PROGRESS_STEP:
            self._last_progress = fraction
            self._report(replace(self.record, updated_at=self._clock()), fraction)
