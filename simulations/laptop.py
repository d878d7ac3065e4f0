"""The laptop simulation: a real broker, the real server, many real agents, one release.

    broker (Mosquitto, free port) ─ server (subprocess: HTTP + TUF + ingest)
    federated training (Flower Simulation Engine, SecAgg+: one client per device, on that
    device's own training partition) ─► training run in the registry
    ─► package from the run + publish (signed) ─► staged rollout (the server's rollout
    controller: waves, soak, health verdicts) ─► N agents update over the air
    ─► agents infer on their own data ─► telemetry ─► report

Training, packaging, publishing and starting the rollout are the server pipeline's steps
(server.pipeline.steps), the same functions the CLI and the API call; the server process's
RolloutRunner drives the waves. Agents share this process (each an object with its own home,
no global state).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np

from agent.config import AgentConfig, init_agent_home
from agent.daemon import Agent
from edgeops.errors import ConfigError, TransportError, UpdateError
from edgeops.packaging import package_model
from edgeops.tasks import Task, load_task, partition_devices
from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline.steps import (
    TrainedRun,
    package_run,
    publish_release,
    record_training_run,
    start_rollout,
)
from server.rollouts import RolloutPolicy, RolloutSpec
from simulations.mosquitto import MosquittoBroker, find_mosquitto, free_port, wait_for_port
from simulations.processes import stop_process
from simulations.report import DeviceResult, SimulationResult

__all__ = [
    "FleetAPI",
    "RolloutSource",
    "SimulationConfig",
    "local_datasets",
    "rollout_policy",
    "run_simulation",
    "running_server",
    "train_federated",
    "wait_until",
    "watch_rollout",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
T = TypeVar("T")

# A laptop fleet has no users to protect: a half-second soak between waves and a short health
# window on each agent keep the staged rollout to seconds. Waves, success and failure
# thresholds are RolloutPolicy's defaults.
SOAK_S = 0.5  # one tick of the server's RolloutRunner
AGENT_HEALTH_WINDOW_S = 2.0
AGENT_HEALTH_MIN_SAMPLES = 0
ROLLOUT_ACTOR = "simulation"
ROLLOUT_POLL_S = 0.25


@dataclass(frozen=True)
class SimulationConfig:
    out_dir: Path
    devices: int = 10
    task: str = "digits"
    alpha: float | None = None  # None: IID local data; else Dirichlet non-IID
    seed: int = 0
    epochs: int = 30  # centralized training epochs
    telemetry_interval_s: float = 1.0
    timeout_s: float = 120.0
    training: str = "federated"  # or "centralized"
    rounds: int = 5  # federated rounds
    local_epochs: int = 3  # federated local epochs per round

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError(f"--devices must be at least 1, got {self.devices}")
        if self.training not in ("federated", "centralized"):
            raise ConfigError(f"--training must be federated or centralized, got {self.training!r}")
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


@contextmanager
def running_server(settings: ServerSettings, log_path: Path) -> Iterator[subprocess.Popen]:
    """`edgeops server run` as a subprocess, as an operator would start it."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeops.cli", "server", "run", "--home", str(settings.home)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_port(settings.http_host, settings.http_port, timeout_s=60)
        except TransportError as err:
            raise TransportError(f"the server did not start; see {log_path}") from err
        yield process
    finally:
        stop_process(process, timeout_s=15)


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


def local_datasets(task: Task, config: SimulationConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's own stream of inputs and labels, from the held-out split (the same
    partitioner federated training uses for each device's training and evaluation rows)."""
    data = task.load_data()
    parts = partition_devices(data.y_test, config.devices, config.alpha, seed=config.seed)
    return [(data.x_test[idx], data.y_test[idx]) for idx in parts]


def rollout_policy(config: SimulationConfig) -> RolloutPolicy:
    """The simulation's rollout policy: RolloutPolicy's waves and thresholds, a short soak,
    and the simulation's timeout as the longest a device may take."""
    return RolloutPolicy(soak_s=SOAK_S, device_timeout_s=config.timeout_s)


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


def run_simulation(config: SimulationConfig, progress: Progress = lambda _msg: None) -> SimulationResult:
    find_mosquitto()  # fail before any work if the broker cannot run
    task = load_task(config.task)
    out = config.out_dir.resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stages: dict[str, float] = {}

    @contextmanager
    def stage(name: str, message: str) -> Iterator[None]:
        progress(f"[{time.monotonic() - started:6.1f}s] {message}")
        t0 = time.monotonic()
        yield
        stages[name] = round(time.monotonic() - t0, 3)

    with ExitStack() as stack:
        with stage("broker", "starting Mosquitto"):
            broker = stack.enter_context(MosquittoBroker(workdir=out / "broker"))

        with stage("server", "initialising and starting the server"):
            settings = ServerSettings(
                home=out / "server",
                http_port=free_port(),
                broker_host=broker.host,
                broker_port=broker.port,
            )
            init_home(settings)
            settings = load_settings(settings.home)
            stack.enter_context(running_server(settings, out / "server.log"))
            api = FleetAPI(settings.resolved_public_url, settings.admin_token_file.read_text().strip())
            stack.callback(api.close)

        if config.training == "federated":
            with stage(
                "train",
                f"federated training on {config.devices} devices ({config.rounds} rounds"
                f"{', SecAgg+' if config.devices >= 3 else ''})",
            ):
                run, training = train_federated(config, settings, progress)
            with stage("package", f"packaging training run {run.id} (fp32 -> int8)"):
                package_run(run, out / "package")
        else:
            with stage("package", f"training and packaging the {task.name} model (fp32 -> int8)"):
                from edgeops.tasks import TrainConfig

                package_model(
                    task, out / "package", train_config=TrainConfig(epochs=config.epochs, seed=config.seed)
                )
            training = {"kind": "centralized", "epochs": config.epochs}
        log.info("training: %s", training)

        with stage("publish", "signing and publishing the release"):
            session_factory = open_database(settings.resolved_database_url)
            stack.callback(close_database, session_factory)
            release = publish_release(settings, session_factory, out / "package", "int8",
                                    actor="simulation")
            progress(f"          published {release.target_path} as v{release.version}")

        with stage("agents", f"starting {config.devices} agents"):
            trusted_root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
            datasets = local_datasets(task, config)
            agents: list[Agent] = []
            for i in range(config.devices):
                agent_config = AgentConfig(
                    home=out / "agents" / f"device-{i:03d}",
                    device_id=f"device-{i:03d}",
                    server_url=settings.resolved_public_url,
                    broker_host=broker.host,
                    broker_port=broker.port,
                    telemetry_interval_s=config.telemetry_interval_s,
                    http_port=0,
                    health_window_s=AGENT_HEALTH_WINDOW_S,
                    health_min_samples=AGENT_HEALTH_MIN_SAMPLES,
                )
                init_agent_home(agent_config.home, agent_config, trusted_root)
                agent = Agent(agent_config)
                agent.start()
                stack.callback(agent.stop)
                agents.append(agent)
            ids = [a.config.device_id for a in agents]
            wait_until(
                "every agent to register with the server",
                lambda: {d["device_id"] for d in api.devices() if d["online"]} >= set(ids),
                config.timeout_s,
            )

        with stage("rollout", f"rolling out v{release.version} to {len(ids)} devices in waves"):
            started_rollout = start_rollout(
                session_factory,
                RolloutSpec(target=release.target_path, policy=rollout_policy(config)),
                ROLLOUT_ACTOR,
            )
            rollout = watch_rollout(api, started_rollout.id, config.timeout_s, progress)

            def all_updated() -> bool:
                reported = {d["device_id"]: d for d in api.devices()}
                return all(reported.get(i, {}).get("version") == release.version for i in ids)

            wait_until(f"every device to report v{release.version}", all_updated, config.timeout_s)

        with stage("inference", "devices infer on their own data"):
            scores: dict[str, tuple[int, float | None, int]] = {}
            for agent, (x, y) in zip(agents, datasets):
                correct = 0
                for row, label in zip(x, y):
                    prediction = agent.predict(row[np.newaxis, :])
                    correct += int(prediction.classes[0] == label)
                scores[agent.config.device_id] = (len(y), correct / len(y) if len(y) else None, len(set(y.tolist())))

        with stage("telemetry", "waiting for every device's telemetry at the server"):
            wait_until(
                "telemetry from every device",
                lambda: all(
                    d["telemetry_messages"] > 0 for d in api.devices() if d["device_id"] in set(ids)
                )
                and len(api.devices()) >= len(ids),
                config.timeout_s,
            )
            fleet = {d["device_id"]: d for d in api.devices()}
            ingest_stats = api.ingest_stats()

    devices = [
        DeviceResult(
            device_id=i,
            version=fleet[i].get("version"),
            state=fleet[i].get("state"),
            online=bool(fleet[i].get("online")),
            telemetry_messages=int(fleet[i].get("telemetry_messages", 0)),
            local_samples=scores[i][0],
            local_accuracy=scores[i][1],
            classes_seen=scores[i][2],
        )
        for i in ids
    ]
    package_summary = {
        k: report_value
        for k, report_value in _package_json(out / "package").items()
        if k in ("sizes_bytes", "size_ratio", "accuracy", "agreement", "p50_latency_us")
    }
    return SimulationResult(
        task=task.name,
        published_version=release.version,
        published_target=release.target_path,
        devices=devices,
        package=package_summary,
        stage_seconds=stages,
        wall_seconds=round(time.monotonic() - started, 3),
        broker=f"mqtt://{broker.host}:{broker.port}",
        server_url=settings.resolved_public_url,
        out_dir=str(out),
        ingest=ingest_stats,
        rollout=_rollout_report(rollout),
    )


def _rollout_report(rollout: dict[str, Any]) -> dict[str, Any]:
    """What report.json keeps of the rollout: its verdict, policy and waves."""
    keys = ("id", "target", "status", "reason", "policy", "wave_count", "devices", "done",
            "failed", "waves")
    return {key: rollout[key] for key in keys}


def _package_json(package_dir: Path) -> dict[str, Any]:
    from edgeops.atomic_io import read_json

    return read_json(package_dir / "report.json")
