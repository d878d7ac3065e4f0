"""What the scenario engine (simulations/engine.py) asks of a laptop fleet's server:

    FleetAPI          the few server API calls it makes, over real HTTP
    train_federated   the champion: Flower's Simulation Engine under SecAgg+, one client per
                      device on that device's own training partition, recorded in the registry
    watch_rollout     follow a staged rollout through the API until it completes
    wait_until        poll until something holds, or fail naming what did not
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx

from edgeops.errors import ConfigError, TransportError, UpdateError
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.steps import (
    TrainedRun,
    record_training_run,
)

__all__ = [
    "FleetAPI",
    "RolloutSource",
    "SimulationConfig",
    "train_federated",
    "wait_until",
    "watch_rollout",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
T = TypeVar("T")

ROLLOUT_POLL_S = 0.25


@dataclass(frozen=True)
class SimulationConfig:
    """How the champion is trained: federated, one client per device."""

    devices: int = 10
    task: str = "digits"
    alpha: float | None = None  # None: IID local data; else Dirichlet non-IID
    seed: int = 0
    rounds: int = 5  # federated rounds
    local_epochs: int = 3  # federated local epochs per round

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError(f"--devices must be at least 1, got {self.devices}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("--rounds and --local-epochs must be at least 1")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"--alpha must be > 0, got {self.alpha}")


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; raise TransportError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TransportError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


class FleetAPI:
    """The few server API calls the simulation makes, over real HTTP."""

    def __init__(self, base_url: str, token: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=30)
        self._auth = {"Authorization": f"Bearer {token}"}

    def devices(self) -> list[dict[str, Any]]:
        response = self._client.get("/api/devices", headers=self._auth)
        response.raise_for_status()
        return response.json()

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        """The rollout as the server's API reports it (status, per-wave progress)."""
        response = self._client.get(f"/api/rollouts/{rollout_id}", headers=self._auth)
        if response.status_code >= 400:
            raise TransportError(
                f"cannot read rollout {rollout_id} ({response.status_code}): {response.text}"
            )
        return response.json()

    def ingest_stats(self) -> dict[str, Any]:
        response = self._client.get("/api/ingest/stats", headers=self._auth)
        return response.json() if response.status_code == 200 else {}

    def close(self) -> None:
        self._client.close()


def train_federated(
    config: SimulationConfig, settings: ServerSettings, progress: Progress
) -> tuple[TrainedRun, dict[str, Any]]:
    """A federated run over the devices' training partitions, recorded in the registry:
    (the recorded run, summary)."""
    from server.federated.config import FederatedConfig, SecAggConfig
    from server.federated.driver import EngineResources, run_simulation_engine

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    federated = FederatedConfig(
        task=config.task,
        num_clients=config.devices,
        num_rounds=config.rounds,
        local_epochs=config.local_epochs,
        seed=config.seed,
        alpha=config.alpha,
        secagg=SecAggConfig() if config.devices >= 3 else None,
    )
    started_at = datetime.now(UTC)
    result = run_simulation_engine(
        federated,
        on_round=lambda r: progress(
            f"          round {r.round}: {r.status}, held-out accuracy "
            f"{(r.heldout_accuracy or 0):.2%} ({r.replied}/{r.sampled} devices)"
        ),
        resources=EngineResources(client_cpus=1.0),
    )
    session_factory = open_database(settings.resolved_database_url)
    try:
        run = record_training_run(settings, session_factory, config.task, result, started_at)
    finally:
        close_database(session_factory)
    summary = {
        "kind": "federated",
        "training_run_id": run.id,
        "rounds": len(result.rounds),
        "rounds_aggregated": len(result.aggregated_rounds),
        "secure_aggregation": result.secagg is not None,
        "heldout_accuracy": result.final_metrics["heldout_accuracy"],
        "seconds": result.wall_seconds,
    }
    return run, summary


def _wave_line(rollout: dict[str, Any]) -> str:
    waves = " ".join(
        f"[{w['index']}: {w['done']}/{w['devices']} {w['status']}]" for w in rollout["waves"]
    )
    return (
        f"          rollout {rollout['id']} {rollout['status']}, wave {rollout['current_wave']}"
        f" of {rollout['wave_count']}: {waves}"
    )


class RolloutSource(Protocol):
    """Where a rollout's state is read from (FleetAPI: the server's /api/rollouts)."""

    def rollout(self, rollout_id: int) -> dict[str, Any]: ...


def watch_rollout(
    api: RolloutSource, rollout_id: int, timeout_s: float, progress: Progress
) -> dict[str, Any]:
    """Follow the rollout through the server's API until it completes, showing each change
    of its waves; UpdateError if it aborts, TransportError if it stalls past `timeout_s`."""
    shown = ""
    last_change = time.monotonic()
    while True:
        rollout = api.rollout(rollout_id)
        line = _wave_line(rollout)
        if line != shown:
            progress(line)
            shown, last_change = line, time.monotonic()
        if rollout["status"] == "completed":
            return rollout
        if rollout["status"] == "aborted":
            raise UpdateError(
                f"rollout {rollout_id} of {rollout['target']} aborted: "
                f"{rollout.get('reason') or 'no reason given'} ({rollout['failed']} of "
                f"{rollout['devices']} devices failed)"
            )
        if time.monotonic() - last_change > timeout_s:
            raise TransportError(
                f"rollout {rollout_id} made no progress for {timeout_s:.0f} s "
                f"(status {rollout['status']}, wave {rollout['current_wave']} of "
                f"{rollout['wave_count']})"
            )
        time.sleep(ROLLOUT_POLL_S)
