"""The device agent: serves the active model, applies updates, reports over MQTT.

Threads of one Agent (no state is shared between agents; many can live in one process):

    caller / HTTP threads   predict(): reads the current model reference, records telemetry
    paho network thread     decodes commands and queues them (never does the work)
    worker thread           runs commands one at a time: update, rollback, switch; ticks the
                            health window and a staged update waiting for its switch window
    telemetry thread        flushes the telemetry window every `telemetry_interval_s`
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from agent.api_auth import ensure_token
from agent.config import AgentConfig
from agent.http_api import HttpApi
from agent.ota.health import HealthSampler
from agent.ota.machine import UpdateRecord
from agent.ota.model_store import ModelStore, SlotName, other_slot
from agent.ota.runner import UpdateRunner, kill_at
from agent.ota.updater import InstalledModel, ReleaseUpdater
from agent.renew import CHECK_INTERVAL_S as RENEWAL_CHECK_INTERVAL_S
from agent.renew import renew_if_due
from agent.runtime import ModelRuntime, NoModelError
from agent.telemetry.feedback_store import FEEDBACK_FILE, FeedbackStore
from agent.telemetry.mqtt_link import MqttLink
from agent.telemetry.outbox import Outbox
from agent.telemetry.privacy import WindowPrivacy
from agent.telemetry.process_stats import ProcessStats
from agent.telemetry.recent_predictions import RecentPredictions, sample_ids
from agent.telemetry.window import TelemetryWindow, WindowRelease
from edgeops import __version__
from edgeops.errors import EdgeOpsError, PayloadError, UpdateError
from edgeops.messages import (
    AgentState,
    Command,
    DeviceStatus,
    TelemetryBatch,
    TransferInfo,
    decode,
)
from edgeops.update_states import COMMITTED_STATES

logger = logging.getLogger(__name__)

_STOP = object()  # worker queue sentinel
_TICK = object()  # worker queue: look at the update (health window, resume) now
_RESUME = object()
FOLD_INTERVAL_S = 1.0


@dataclass(slots=True)
class Prediction:
    """The result of one predict call (not frozen: a frozen init costs µs on the hot path)."""

    probabilities: np.ndarray  # (n, num_classes)
    model: str
    version: int
    # The call's id; sample i is `<prediction_id>.<i>` (a one-sample call: either form).
    prediction_id: str = ""

    @property
    def classes(self) -> np.ndarray:
        """The most probable class of each sample, shape (n,)."""
        return self.probabilities.argmax(axis=1)

    @property
    def prediction_ids(self) -> list[str]:
        """One id per sample, for `Agent.feedback`."""
        return sample_ids(self.prediction_id, len(self.probabilities))

    def to_json(self) -> dict[str, Any]:
        return {
            "outputs": self.probabilities.tolist(),
            "classes": self.classes.tolist(),
            "model": self.model,
            "version": self.version,
            "prediction_id": self.prediction_id,
            "prediction_ids": self.prediction_ids,
        }


class Agent:
    """One device agent. `start()` it, `predict()` with it, `stop()` it."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.device_id = config.device_id
        self._clock = clock
        fault = kill_at(config.fault_point)
        self._store = ModelStore(config.home, fault=fault)
        self._updater = ReleaseUpdater(config, self._store, fault=fault)
        self._health = HealthSampler()
        self._progress: float | None = None
        self._deferred: list[Command] = []  # updates that arrived during a health window
        self._runner = UpdateRunner(
            config,
            self._store,
            self._updater,
            self._health,
            serve=self._install,
            report=self._report_update,
            clock=clock,
            fault=fault,
        )
        self._model: InstalledModel | None = None
        self._state: AgentState = "starting"
        self._reason: str | None = None
        self._target: str | None = None  # the update in progress or last attempted
        self._changed = threading.Condition()
        self._window = TelemetryWindow(
            config.device_id,
            WindowRelease(),
            clock(),
            privacy=WindowPrivacy(config.telemetry_min_count, config.telemetry_epsilon),
        )
        self._recent = RecentPredictions(config.prediction_cache_size)
        self._feedback_store: FeedbackStore | None = None  # opened by the first label
        self._feedback_lock = threading.Lock()
        self._commands: queue.Queue[Any] = queue.Queue()
        self._command_lock = threading.Lock()  # one command at a time, whoever calls
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._link: MqttLink | None = None
        self._http: HttpApi | None = None
        self._started = False
        self._process_stats = ProcessStats()
        self._outbox: Outbox | None = None  # opened by start(): telemetry waiting for PUBACK
        self.bad_commands = 0  # malformed cmd payloads, counted and dropped
        self._next_renewal_check = 0.0  # monotonic; the telemetry loop's first pass checks
        self.last_command_id: str | None = None  # its rollout id goes into log lines

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> Agent:
        if self._started:
            return self
        self._started = True
        self._stop_event.clear()
        self._load_active_model()
        self._restore_update_status()
        if self.config.http_port is not None:
            self._http = HttpApi(
                self,
                self.config.http_host,
                self.config.http_port,
                self.config.http_max_body_bytes,
                ensure_token(self.config.api_token_path),
            )
            self._http.start()
            logger.info("device %s: local API on %s", self.device_id, self._http.url)
        self._outbox = Outbox(
            self.config.outbox_path,
            max_messages=self.config.outbox_max_messages,
            max_bytes=self.config.outbox_max_bytes,
        )
        self._link = MqttLink(
            self.config,
            on_command=self._receive_command,
            status_provider=self.status,
            outbox=self._outbox,
        )
        self._link.set_will(self.status())
        self._link.start()  # publishes the status on every (re)connect
        for name, target in (("worker", self._work), ("telemetry", self._telemetry_loop)):
            thread = threading.Thread(
                target=target, name=f"edgeops-agent-{self.device_id}-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self._runner.busy:
            self._commands.put(_RESUME)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush telemetry, stop the threads, publish `offline` and disconnect."""
        if not self._started:
            return
        self._started = False
        self._stop_event.set()
        self._commands.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._link is not None:
            self.flush_telemetry()
            final = self.status().model_copy(update={"online": False, "state": "offline"})
            self._link.stop(final, timeout_s=min(timeout_s, 5.0))
            self._link = None
        if self._outbox is not None:
            self._outbox.close()  # what was not acknowledged is sent after the next start
            self._outbox = None
        with self._feedback_lock:
            if self._feedback_store is not None:
                self._feedback_store.close()
                self._feedback_store = None
        logger.info("device %s: stopped", self.device_id)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """Started, and its worker and telemetry threads still run (the systemd watchdog)."""
        return self._started and all(thread.is_alive() for thread in self._threads)

    @property
    def http_url(self) -> str | None:
        return self._http.url if self._http is not None else None

    @property
    def link(self) -> MqttLink | None:
        return self._link

    # Inference -------------------------------------------------------------------------

    def predict(self, inputs: ArrayLike) -> Prediction:
        """Class probabilities for a batch (n, *features). Bad input raises PayloadError."""
        model = self._model
        if model is None:
            self._window.record_error()
            raise NoModelError(f"device {self.device_id} has no model yet")
        if inputs.__class__ is not np.ndarray or inputs.dtype != np.float32:
            try:
                inputs = np.asarray(inputs, dtype=np.float32)
            except (TypeError, ValueError) as err:
                self._window.record_error()
                self._health.record_error()
                raise PayloadError(f"inputs are not a numeric array: {err}") from err
        runtime = model.runtime
        started = time.perf_counter()
        try:
            probabilities = runtime.predict(inputs)
        except PayloadError:
            self._window.record_error()
            self._health.record_error()
            raise
        latency_s = time.perf_counter() - started
        self._health.record(latency_s, probabilities)
        # Copy: the window keeps the inputs until it folds them, the recent predictions
        # until a label joins them or they age out, and callers reuse buffers.
        kept = inputs.copy()
        self._window.record(latency_s, kept, probabilities)
        release = model.record.release
        call_id = self._recent.add(kept, probabilities, release.model, release.version)
        return Prediction(probabilities, release.model, release.version, call_id)

    def feedback(self, prediction_id: str, label: int) -> None:
        """The application reports the true `label` of an earlier prediction.

        It counts in the current telemetry window's confusion (if the prediction came from
        the model serving now) and joins the bounded on-device store of labelled examples,
        which never leaves the device. PayloadError names what is wrong: an unknown or too
        old id, a label already given, a label that is not a class of the model.
        """
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            raise PayloadError(f"label must be an integer class, got {label!r}")
        remembered = self._recent.take(prediction_id)
        if not 0 <= int(label) < remembered.num_classes:
            self._recent.release(remembered.prediction_id)
            raise PayloadError(
                f"label {label!r} is not a class of {remembered.model} "
                f"(0..{remembered.num_classes - 1})"
            )
        model = self._model
        try:
            self._open_feedback_store().add(
                remembered.prediction_id,
                remembered.inputs,
                int(label),
                remembered.predicted,
                self._clock(),
                model=remembered.model,
                version=remembered.version,
            )
        except PayloadError:
            raise  # labelled before (the store outlives the in-memory map)
        except Exception:
            self._recent.release(remembered.prediction_id)
            raise
        release = model.release if model is not None else None
        if release is not None and (release.model, release.version) == (
            remembered.model, remembered.version,
        ):
            self._window.record_feedback(int(label), remembered.predicted)

    def _open_feedback_store(self) -> FeedbackStore:
        with self._feedback_lock:
            if self._feedback_store is None:
                self._feedback_store = FeedbackStore(
                    self.config.home / FEEDBACK_FILE,
                    max_examples=self.config.feedback_max_examples,
                )
            return self._feedback_store

    @property
    def feedback_store(self) -> FeedbackStore:
        """The on-device labelled examples (for the federated ClientApp and tests)."""
        return self._open_feedback_store()

    # Status ----------------------------------------------------------------------------

    def status(self) -> DeviceStatus:
        model = self._model
        release = model.release if model is not None else None
        return DeviceStatus(
            device_id=self.device_id,
            online=True,
            state=self._state,
            model=release.model if release else None,
            version=release.version if release else None,
            release=model.target if model is not None else None,
            target=self._target,
            reason=self._reason,
            progress=self._progress,
            agent_version=__version__,
            timestamp=self._clock(),
            transfer=self._transfer_info(),
        )

    def _transfer_info(self) -> TransferInfo | None:
        """How the release named as `target` arrived, if this process downloaded it."""
        transfer, release = self._updater.last_transfer, self._updater.last_release
        if transfer is None or release is None or release[0] != self._target:
            return None
        return TransferInfo(how=transfer.kind, bytes_received=transfer.received_bytes,
                            full_bytes=release[1])

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def active_version(self) -> int | None:
        model = self._model
        return model.release.version if model is not None else None

    def _set_state(self, state: AgentState, reason: str | None = None) -> None:
        with self._changed:
            self._state = state
            self._reason = reason
            self._progress = None
            self._changed.notify_all()
        link = self._link
        if link is not None:
            link.publish_status(self.status())

    def _report_update(self, record: UpdateRecord, progress: float | None) -> None:
        """The update runner's report of a transition (or download progress): publish it."""
        with self._changed:
            self._state = record.state
            self._target = record.target
            self._reason = record.reason
            self._progress = progress
            self._changed.notify_all()
        link = self._link
        if link is not None:
            link.publish_status(self.status())

    def _restore_update_status(self) -> None:
        """After a restart, the status says how the last update ended (or that it goes on)."""
        record = self._runner.record
        if record is None:
            return
        with self._changed:
            self._target = record.target
            if record.terminal:
                self._state = record.state
                self._reason = record.reason
            self._changed.notify_all()

    @property
    def update_record(self) -> UpdateRecord | None:
        """The last update's saved record (None if this home never updated)."""
        return self._runner.record
    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Block until the agent serves `version` and is running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not (self.active_version == version and self._state in COMMITTED_STATES):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def wait_for_state(self, state: AgentState, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._state != state:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # Models ----------------------------------------------------------------------------

    def _load_slot(self, slot: SlotName, *, smoke_test: bool = False) -> InstalledModel:
        record = self._store.read_slot(slot)
        runtime = ModelRuntime(
            record.model_path, record.release, intra_op_threads=self.config.intra_op_threads
        )
        if smoke_test:
            runtime.smoke_test(record.release.golden)
        return InstalledModel(record=record, runtime=runtime)

    def _install(self, model: InstalledModel | None) -> None:
        """Serve `model` from now on; telemetry starts a new window for it."""
        with self._changed:
            self._model = model
            self._changed.notify_all()
        if self._link is not None:
            self._link.set_will(self.status())
        leftover = self._window.rebind(
            WindowRelease.of(model.release if model else None), self._clock()
        )
        self._publish_telemetry(leftover)

    def _load_active_model(self) -> None:
        """Load the committed slot; if it is broken, fall back to the other one or idle."""
        failures: list[str] = []
        try:
            pointer = self._store.active_pointer()
        except UpdateError as err:
            pointer = None
            failures.append(str(err))
        if pointer is not None:
            candidates: list[SlotName] = [pointer.slot, other_slot(pointer.slot)]
        else:
            candidates = ["a", "b"] if failures else []
        for slot in candidates:
            # A slot that is not the committed one may hold an update that never finished:
            # serve it only if it passes its smoke test.
            committed = pointer is not None and slot == pointer.slot
            try:
                model = self._load_slot(slot, smoke_test=not committed)
            except EdgeOpsError as err:
                failures.append(f"slot {slot} unusable: {err}")
                logger.error("device %s: %s", self.device_id, failures[-1])
                continue
            if not committed:
                self._store.activate(slot, keep_previous=False)
                logger.warning(
                    "device %s: fell back to slot %s (%s)", self.device_id, slot, model.target
                )
            self._install(model)
            reason = f"fell back to slot {slot}: {'; '.join(failures)}" if failures else None
            self._set_state("running", reason)
            return
        self._set_state("idle", "; ".join(failures) or None)
        if failures:
            logger.warning("device %s: no usable model, idle", self.device_id)

    # Commands --------------------------------------------------------------------------

    def _receive_command(self, payload: bytes) -> None:
        """paho's thread: validate and queue; a bad payload is counted and dropped."""
        try:
            command = decode(Command, payload)
            if command.kind == "update" and not command.target:
                raise PayloadError("update command has no target")
        except PayloadError as err:
            self.bad_commands += 1
            logger.warning("device %s: dropped a bad command: %s", self.device_id, err)
            return
        self.submit_command(command)

    def submit_command(self, command: Command) -> None:
        """Queue `command` for the worker thread."""
        self._commands.put(command)

    def _work(self) -> None:
        while True:
            try:
                item = self._commands.get(timeout=self._runner.seconds_until_tick())
            except queue.Empty:
                item = _TICK
            if item is _STOP:
                return
            if item is _TICK or item is _RESUME:
                self._drive_update(resume=item is _RESUME)
            else:
                self.handle_command(item)

    def _drive_update(self, *, resume: bool = False) -> None:
        """Resume a saved update or tick its health window; then run a deferred update."""
        with self._command_lock:
            try:
                if resume:
                    self._runner.resume()
                else:
                    self._runner.tick()
            except Exception as err:  # a bug: report it, keep the worker alive
                logger.exception("device %s: update step crashed", self.device_id)
                self._set_state("update_failed", f"internal error: {type(err).__name__}: {err}")
        if not self._runner.busy and self._deferred:
            self.handle_command(self._deferred.pop())
            self._deferred.clear()

    def handle_command(self, command: Command) -> DeviceStatus:
        """Carry out `command` now (on the caller's thread); never raises for its failures."""
        with self._command_lock:
            self._handle_command(command)
        if self._runner.in_health_window or self._runner.holding:
            self._commands.put(_TICK)  # wake the worker: it ticks the window (or the hold)
        return self.status()

    def _handle_command(self, command: Command) -> None:
        self.last_command_id = command.command_id
        logger.info(
            "device %s: command %s %s (%s)",
            self.device_id,
            command.kind,
            command.target or "",
            command.command_id,
        )
        try:
            if command.kind == "update":
                self._update(command)
            elif command.kind == "rollback":
                self._rollback()
            elif command.kind == "switch":
                self._switch(command.target or "")
            else:
                logger.warning("device %s: command kind %r not supported yet", self.device_id, command.kind)
        except EdgeOpsError as err:
            logger.warning("device %s: %s failed: %s", self.device_id, command.kind, err)
            self._set_state("update_failed", str(err))
        except Exception as err:  # a bug: report it, keep serving, keep the worker alive
            logger.exception("device %s: %s crashed", self.device_id, command.kind)
            self._set_state("update_failed", f"internal error: {type(err).__name__}: {err}")

    def _update(self, command: Command) -> None:
        target = command.target or ""
        allow_downgrade = bool(command.allow_downgrade)
        record = self._runner.record
        if self._runner.holding and record is not None and record.target != target:
            # Nothing switched yet: a newer update replaces the one waiting to switch.
            self._runner.cancel(f"superseded by {target} before the switch")
            record = self._runner.record
        if self._runner.busy and record is not None:
            if record.target != target:
                logger.info(
                    "device %s: %s waits for the update of %s (%s)",
                    self.device_id, target, record.target, record.state,
                )
                self._deferred.append(command)
            return
        current = self._model
        if current is not None and current.target == target:
            logger.info("device %s: %s is already active", self.device_id, target)
            with self._changed:
                self._target = target
            self._set_state("committed", "already active")
            return
        self._runner.start(
            target,
            allow_downgrade=allow_downgrade,
            switch=command.switch or "now",
            switch_window=command.switch_window,
        )

    def _switch(self, target: str) -> None:
        """A `switch` command: the update to `target` held in `staged` switches now."""
        if not self._runner.switch_now(target):
            logger.warning("device %s: switch to %s asked, but no update of it waits",
                           self.device_id, target)

    def _rollback(self) -> None:
        if not self._runner.rollback_active("rollback requested by the server"):
            logger.warning("device %s: rollback asked, but no previous model", self.device_id)
            with self._changed:
                self._reason = "rollback refused: no previous model"
            if self._link is not None:
                self._link.publish_status(self.status())
            return

    # Telemetry -------------------------------------------------------------------------

    def flush_telemetry(self, *, message_id: str | None = None) -> TelemetryBatch | None:
        """Close the current window now and publish it (None if nothing happened).

        The batch is in the outbox when this returns: it survives a crash from here on.
        `message_id` lets a caller replaying a window after a crash keep its id.
        """
        rss_mb, cpu_percent = self._process_stats.sample()
        outbox = self._outbox
        batch = self._window.flush(
            self._clock(),
            rss_mb=rss_mb,
            cpu_percent=cpu_percent,
            outbox_dropped=outbox.stats().dropped if outbox is not None else None,
            message_id=message_id,
        )
        self._publish_telemetry(batch)
        return batch

    def _publish_telemetry(self, batch: TelemetryBatch | None) -> None:
        if batch is not None and self._link is not None:
            self._link.publish_telemetry(batch)

    def _renew_certificate(self) -> None:
        """Renew the device certificate if it is due; a failure waits for the next check."""
        try:
            renew_if_due(self.config, self._clock())
        except Exception as err:  # the current certificate still works: log and retry later
            logger.warning("device %s: certificate renewal failed, retrying in %.0f s: %s",
                           self.device_id, RENEWAL_CHECK_INTERVAL_S, err)

    def _telemetry_loop(self) -> None:
        """Fold pending samples every second (off the hot path); flush every interval."""
        interval_s = self.config.telemetry_interval_s
        next_flush = time.monotonic() + interval_s
        while not self._stop_event.wait(min(FOLD_INTERVAL_S, max(0.0, next_flush - time.monotonic()))):
            if time.monotonic() >= self._next_renewal_check:
                self._next_renewal_check = time.monotonic() + RENEWAL_CHECK_INTERVAL_S
                self._renew_certificate()
            try:
                if time.monotonic() >= next_flush:
                    next_flush += interval_s
                    self.flush_telemetry()
                else:
                    self._window.fold()
            except Exception:  # keep the loop alive; the next window will try again
                logger.exception("device %s: telemetry flush failed", self.device_id)
