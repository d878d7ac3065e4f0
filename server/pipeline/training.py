"""The training step of a pipeline run: who takes part, and the training job that runs
Flower outside the server process.

A job is `python -m server.pipeline.training_job --home HOME --run ID`: Flower's Simulation
Engine with one virtual SuperNode per participating device, each on that device's own data
(its base partition plus the labelled feedback in its agent home; see
server.federated.participants). The job records its result as a training run tagged with the
pipeline run's id and attempt, and that row is the only proof a run was trained: the runner
adopts it after a restart instead of training again. The job dies with the server (Linux
parent-death signal), so a server killed mid-training leaves no orphan that could record a
second model; the next server starts a new attempt.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError
from edgeops.federated.config import Participant
from server.config.settings import ServerSettings
from server.db.tables import DeviceLabel, TrainingRun

__all__ = [
    "JOB_MODULE",
    "Participant",
    "TrainingJob",
    "choose_participants",
    "recorded_training_runs",
    "run_dir",
    "start_job",
]

logger = logging.getLogger(__name__)

JOB_MODULE = "server.pipeline.training_job"
_PR_SET_PDEATHSIG = 1


def run_dir(settings: ServerSettings, run_id: int) -> Path:
    return settings.pipeline_dir / str(run_id)


def simulated_fleet(settings: ServerSettings) -> list[Path]:
    """The agent homes of the simulated fleet, in device id order (ConfigError if unset)."""
    if not settings.simulated_fleet_dir:
        raise ConfigError(
            "no trainer is set up: federated retraining needs simulated_fleet_dir (a folder of "
            "agent homes, as the laptop simulation makes); training through a SuperLink is not "
            "built yet"
        )
    root = Path(settings.simulated_fleet_dir)
    if not root.is_dir():
        raise ConfigError(f"simulated_fleet_dir {root} is not a folder")
    return sorted(p for p in root.iterdir() if p.is_dir())


def choose_participants(
    session: Session, settings: ServerSettings, scope: str, cohort: str | None, min_devices: int
) -> tuple[list[Participant], int]:
    """(the participants, the fleet's size = number of base partitions). `scope` is
    "drifted_cohort" (only the devices of `cohort`, when the trigger names one) or "fleet".
    ConfigError if fewer than `min_devices` take part."""
    homes = simulated_fleet(settings)
    groups = dict(session.execute(select(DeviceLabel.device_id, DeviceLabel.group_name)).all())
    everyone = [
        Participant(home.name, groups.get(home.name) or "default", index,
                    str(home / "feedback.db"))
        for index, home in enumerate(homes)
    ]
    chosen = everyone
    if scope == "drifted_cohort" and cohort is not None:
        chosen = [p for p in everyone if p.cohort == cohort]
    if len(chosen) < min_devices:
        where = f"cohort {cohort!r}" if scope == "drifted_cohort" and cohort else "the fleet"
        raise ConfigError(
            f"only {len(chosen)} devices of {where} can take part; the policy needs "
            f"min_devices = {min_devices}"
        )
    return chosen, len(everyone)


def recorded_training_runs(session: Session, pipeline_run_id: int) -> list[TrainingRun]:
    """Succeeded training runs recorded for this pipeline run (at most one, by design)."""
    rows = session.scalars(
        select(TrainingRun).where(TrainingRun.status == "succeeded").order_by(TrainingRun.id)
    )
    return [r for r in rows if (r.config or {}).get("pipeline_run_id") == pipeline_run_id]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class TrainingJob:
    run_id: int
    attempt: int
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def poll(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def start_job(settings: ServerSettings, run_id: int, attempt: int) -> TrainingJob:
    folder = run_dir(settings, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"training-{attempt}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", JOB_MODULE, "--home", str(settings.home), "--run",
             str(run_id), "--attempt", str(attempt)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    logger.info("pipeline run %d: training attempt %d started (pid %d)", run_id, attempt,
                process.pid)
    return TrainingJob(run_id, attempt, process, log_path)
