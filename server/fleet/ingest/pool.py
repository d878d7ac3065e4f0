"""Several ingest worker processes on the shared telemetry subscription, supervised.

    IngestPool (supervisor, this process)
        migrate the database once (a bad URL fails here, before any worker starts)
        worker 1..N: a process each, running `Ingest` with its own client id
        supervisor thread: a worker that dies is started again (backoff if it keeps dying)
    stop(): SIGTERM to every worker; each writes and acknowledges what it holds, then
        disconnects keeping its session; a worker still alive after the timeout is killed
    a worker whose supervisor died (SIGKILL) notices within 0.1 s and stops the same way

Exactly once across workers
- The broker hands each telemetry message of the shared subscription to one worker's
  session; a worker PUBACKs only after its transaction committed (see worker.py).
- A killed worker's unacknowledged messages stay in its persistent session (Mosquitto does
  not move them to another member of the share group). The supervisor restarts the worker
  under the same client id, so the session, and those messages, are resumed and
  redelivered; a message committed but not yet acknowledged comes back as a duplicate that
  storage skips (telemetry by message_id, `INSERT ... ON CONFLICT DO NOTHING` on
  PostgreSQL, so concurrent writers never see a unique violation).

Client ids (`worker_client_id`): worker 1 keeps the single worker's id (the ingest inside
`edgeops server run` uses it too), so going from one to several workers resumes its session;
worker i >= 2 appends `-<i>`. Two processes with one client id would keep taking the
connection from each other: next to `edgeops server run`, number the pool from 2. On a secured broker that
is `<broker_identity>-ingest-<i>`, a name the broker ACL must grant
(`edgeops server broker-config --server-client edgeops-server-ingest-2 ...`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized

from edgeops.errors import ConfigError, EdgeOpsError
from edgeops.signals import stop_on_signals
from server.config.settings import ServerSettings
from server.fleet.ingest.worker import Ingest, IngestTuning, default_client_id

logger = logging.getLogger(__name__)

__all__ = ["IngestPool", "worker_client_id"]

MAX_WORKERS = 64
_MAX_RESTART_DELAY_S = 30.0
_STABLE_AFTER_S = 10.0  # a worker that ran this long resets its restart backoff
_EXIT_CONFIG = 3  # a worker's exit code for an EdgeOpsError (the supervisor logs and retries)

_spawn = multiprocessing.get_context("spawn")  # no fork of a process holding paho threads


def worker_client_id(settings: ServerSettings, index: int) -> str:
    """The MQTT client id of worker `index` (1-based); stable across its restarts."""
    if index < 1:
        raise ConfigError(f"ingest worker index must be >= 1, not {index}")
    base = default_client_id(settings)
    return base if index == 1 else f"{base}-{index}"


@dataclass(frozen=True)
class _WorkerSpec:
    settings: ServerSettings
    database_url: str
    client_id: str
    tuning: IngestTuning
    log_level: int
    supervisor_pid: int


def _run_worker(spec: _WorkerSpec, ready: Synchronized, started_at: Synchronized) -> None:
    """A worker process: run `Ingest` until SIGTERM or SIGINT, then stop it cleanly."""
    from server.db.engine import close_database, open_database

    logging.basicConfig(level=spec.log_level,
                        format=f"%(asctime)s {spec.client_id} %(levelname)s %(name)s: %(message)s")
    with stop_on_signals() as stop:
        try:
            factory = open_database(spec.database_url)
            ingest = Ingest(spec.settings, factory, client_id=spec.client_id, tuning=spec.tuning)
        except EdgeOpsError as err:
            logger.error("ingest worker %s cannot start: %s", spec.client_id, err)
            raise SystemExit(_EXIT_CONFIG) from None
        started_at.value = time.monotonic()
        ingest.start()
        try:
            while not stop.wait(0.1):
                ready.value = int(ingest.wait_ready(0))
                # The supervisor died (SIGKILL): stop too.
                if os.getppid() != spec.supervisor_pid:
                    logger.warning("ingest worker %s lost its supervisor; stopping",
                                   spec.client_id)
                    break
        finally:
            ready.value = 0
            ingest.stop()
            close_database(factory)

class _Slot:
    """One worker position: its process now and its restart history."""

    def __init__(self, index: int, client_id: str) -> None:
        self.index = index
        self.client_id = client_id
        self.process: SpawnProcess | None = None
        self.ready: Synchronized = _spawn.Value("b", 0)
        self.started_at: Synchronized = _spawn.Value("d", 0.0)
        self.launched_at = 0.0
        self.restart_delay_s = 0.0
        self.restart_due = 0.0
        self.restarts = 0


class IngestPool:
    """`workers` ingest processes writing to `database_url` (default: the settings' URL),
    numbered from `first_index` (2 when `edgeops server run`, whose ingest is worker 1,
    runs too)."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        workers: int,
        first_index: int = 1,
        database_url: str = "",
        tuning: IngestTuning | None = None,
        restart_delay_s: float = 0.5,
        log_level: int = logging.INFO,
    ) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"ingest needs 1..{MAX_WORKERS} workers, not {workers}")
        if restart_delay_s <= 0:
            raise ConfigError("ingest restart_delay_s must be > 0")
        self._settings = settings
        self._database_url = database_url or settings.resolved_database_url
        self._tuning = tuning or IngestTuning()
        self._restart_delay_s = restart_delay_s
        self._log_level = log_level
        indices = range(first_index, first_index + workers)
        self._slots = [_Slot(i, worker_client_id(settings, i)) for i in indices]
        self._lock = threading.Lock()  # the supervisor thread and stop() both touch slots
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def client_ids(self) -> list[str]:
        return [slot.client_id for slot in self._slots]

    def start(self) -> None:
        """Migrate the database (ConfigError for a bad URL), start every worker and the
        supervisor thread that restarts workers that die."""
        from server.db.engine import migrate_database

        if self._supervisor is not None:
            raise RuntimeError("IngestPool.start() called twice")
        migrate_database(self._database_url)
        with self._lock:
            for slot in self._slots:
                self._launch(slot)
        self._supervisor = threading.Thread(target=self._supervise, name="ingest-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once every worker is connected and subscribed (False after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while not all(slot.ready.value for slot in self._slots):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def worker_pids(self) -> list[int | None]:
        """The process id of every worker now (None while one waits to be restarted)."""
        with self._lock:
            return [slot.process.pid if slot.process and slot.process.is_alive() else None
                    for slot in self._slots]

    def started_at(self) -> list[float]:
        """`time.monotonic()` at which each worker's current process began connecting
        (0.0 before it got there); CLOCK_MONOTONIC is shared by processes on Linux."""
        return [slot.started_at.value for slot in self._slots]

    @property
    def restarts(self) -> int:
        return sum(slot.restarts for slot in self._slots)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every worker, wait up to `timeout_s` for them, then kill what is left."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        with self._lock:
            processes = [slot.process for slot in self._slots if slot.process is not None]
            for process in processes:
                process.terminate()  # SIGTERM: the worker flushes, acknowledges, disconnects
            deadline = time.monotonic() + timeout_s
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    logger.warning("ingest worker pid %s did not stop in %.0f s; killing it "
                                   "(its unacknowledged messages are redelivered next start)",
                                   process.pid, timeout_s)
                    process.kill()
                    process.join()
            for slot in self._slots:
                slot.process = None
                slot.ready.value = 0

    def __enter__(self) -> IngestPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self, slot: _Slot) -> None:
        spec = _WorkerSpec(self._settings, self._database_url, slot.client_id, self._tuning,
                           self._log_level, os.getpid())
        slot.ready.value = 0
        slot.started_at.value = 0.0
        process = _spawn.Process(target=_run_worker, args=(spec, slot.ready, slot.started_at),
                                 name=f"ingest-{slot.index}", daemon=True)
        process.start()
        slot.process = process
        slot.launched_at = time.monotonic()
        logger.info("ingest worker %d started (pid %s, client id %s)", slot.index, process.pid,
                    slot.client_id)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                for slot in self._slots:
                    self._check(slot, time.monotonic())

    def _check(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None and process.is_alive():
            return
        if process is not None:  # died: schedule the restart
            process.join()
            slot.process = None
            slot.ready.value = 0
            ran_s = now - slot.launched_at
            slot.restart_delay_s = (
                self._restart_delay_s if ran_s >= _STABLE_AFTER_S or not slot.restart_delay_s
                else min(2 * slot.restart_delay_s, _MAX_RESTART_DELAY_S)
            )
            slot.restart_due = now + slot.restart_delay_s
            logger.warning("ingest worker %d (pid %s) exited with code %s after %.1f s; "
                           "restarting it in %.1f s", slot.index, process.pid, process.exitcode,
                           ran_s, slot.restart_delay_s)
        if now >= slot.restart_due:
            slot.restarts += 1
            self._launch(slot)
