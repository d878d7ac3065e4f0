"""The continuous-delivery loop on a laptop: real broker, server process, agents and Flower.

    champion trained federatedly, published, rolled out to every device
    ─► devices infer on their own stream, label what they can (feedback store), telemetry
    ─► a drift hits one cohort ─► the server's monitor notices from the sketches alone
    ─► the server's pipeline: retrain on the devices' fresh data (Simulation Engine, SecAgg+),
       gates, int8 package, signed release, canary against a control cohort, promote or roll
       back ─► the drifted cohort recovers

Nothing here decides anything: the server process does (`server.pipeline.runner`), under the
release policy written into its home. This module drives the fleet's traffic, applies the
scenario's drift and faults, measures accuracy on held-out data and reads what happened.
A server killed on purpose (`kill_at`, fault injection through the runner) is restarted, as a
supervisor would.

Accuracy is measured on each device's share of the task's held-out split, never on what it
trained or labelled: devices' live traffic (and so their feedback) comes from their share of
the training split.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from agent.config import AgentConfig, init_agent_home
from agent.daemon import Agent
from edgeops.errors import ConfigError, EdgeOpsError, TransportError
from edgeops.tasks import Task, load_task, partition_devices
from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline import service
from server.pipeline.machine import FINAL_STATUSES
from server.pipeline.steps import package_run, publish_release, start_rollout
from server.rollouts import RolloutPolicy, RolloutSpec
from simulations.drifts import DRIFTS, drift_inputs
from simulations.laptop import (
    FleetAPI,
    SimulationConfig,
    train_federated,
    wait_until,
    watch_rollout,
)
from simulations.mosquitto import MosquittoBroker, find_mosquitto, free_port, wait_for_port
from simulations.processes import stop_process

__all__ = ["KILL_ENV", "LoopConfig", "LoopResult", "drift_inputs", "laptop_policy", "run_loop"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

from server.pipeline.runner import KILL_ENV  # noqa: E402

LABEL_FAULTS = ("none", "shuffle")


_LAPTOP_POLICY = """
model = "digits"
[triggers]
events = ["drift_detected", "quality_dropped"]
cooldown_s = 600
[retraining]
rounds = {rounds}
local_epochs = 3
participants = "fleet"
min_devices = 3
[gates]
heldout_accuracy_min = 0.9
heldout_change_min = -0.02
min_fleet_examples = 100
fleet_change_min = 0.0
class_recall_min = 0.6
cohort_gap_max = 0.15
int8_drop_pp_max = 2.0
[approval]
mode = "{approval}"
timeout_s = 300
[canary]
step_weights = [50, 100]
interval_s = 8
failure_limit = 2
min_inferences = 60
max_accuracy_drop = 0.05
inconclusive_timeout_s = 60
"""


def laptop_policy(approval: str = "automatic", rounds: int = 3) -> str:
    """The release policy of a laptop fleet: examples/policies/default.toml's gates, with a
    canary of seconds instead of minutes (the monitor's windows are seconds long here)."""
    return _LAPTOP_POLICY.format(approval=approval, rounds=rounds)


@dataclass(frozen=True)
class LoopConfig:
    out_dir: Path
    policy_toml: str  # the release policy the server runs under
    devices: int = 6
    groups: tuple[str, ...] = ("north", "south")  # device i is in groups[i % len(groups)]
    drifted_group: str = "north"
    drift: str = "offset"
    drift_amount: float = 0.5
    label_fault: str = "none"  # "shuffle": the drifted group's labels become random
    rate_hz: float = 25.0  # predictions per second per device
    feedback_share: float = 1.0  # of predictions that get their true label back
    champion_rounds: int = 3
    champion_local_epochs: int = 3
    window_s: float = 3.0  # the monitor's window
    baseline_s: float = 8.0  # undrifted traffic before the drift starts
    trigger: str = "drift"  # "drift": wait for the monitor's event; "manual": a person starts it
    approve: bool = False  # approve the run when it waits for an operator
    kill_at: tuple[str, ...] = ()  # SIGKILL the server at these pipeline points, in order
    timeout_s: float = 420.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.drift not in DRIFTS:
            raise ConfigError(f"drift must be one of {', '.join(DRIFTS)}, got {self.drift!r}")
        if self.label_fault not in LABEL_FAULTS:
            raise ConfigError(f"label_fault must be one of {', '.join(LABEL_FAULTS)}")
        if self.drifted_group not in self.groups:
            raise ConfigError(f"drifted_group {self.drifted_group!r} is not one of {self.groups}")
        if self.devices < 2 * len(self.groups):
            raise ConfigError("the loop needs at least two devices per group (canary and control)")
        if self.trigger not in ("drift", "manual"):
            raise ConfigError(f"trigger must be drift or manual, got {self.trigger!r}")


@dataclass
class LoopResult:
    run: dict[str, Any]  # the pipeline run as the server reports it (with its timeline)
    figures: dict[str, Any]
    server_restarts: int = 0
    device_versions: dict[str, int | None] = field(default_factory=dict)
    training_runs: int = 0  # training runs recorded for the pipeline run
    releases: int = 0  # releases of the model


class _Traffic:
    """Every device's live traffic in one thread: predict, then (often) label it."""

    def __init__(self, agents: list[Agent], pools: list[tuple[NDArray[np.float32], NDArray[np.int64]]],
                 groups: list[str], config: LoopConfig) -> None:
        self._agents, self._pools, self._groups, self._config = agents, pools, groups, config
        self._rng = np.random.default_rng(config.seed)
        self.drift_on = False
        self.labels_corrupted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loop-traffic", daemon=True)
        self.predictions = 0
        self.labels = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _drifted(self, index: int) -> bool:
        return self.drift_on and self._groups[index] == self._config.drifted_group

    def _loop(self) -> None:
        period = 1.0 / self._config.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            for index, agent in enumerate(self._agents):
                x_pool, y_pool = self._pools[index]
                pick = int(self._rng.integers(len(y_pool)))
                x = x_pool[pick : pick + 1]
                if self._drifted(index):
                    x = drift_inputs(x, self._config.drift, self._config.drift_amount)
                try:
                    prediction = agent.predict(x)
                except EdgeOpsError:
                    continue  # no model yet, or mid-update
                self.predictions += 1
                if self._rng.random() >= self._config.feedback_share:
                    continue
                label = int(y_pool[pick])
                if self.labels_corrupted and self._groups[index] == self._config.drifted_group:
                    label = int(self._rng.integers(10))
                try:
                    agent.feedback(prediction.prediction_ids[0], label)
                    self.labels += 1
                except EdgeOpsError:
                    pass
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


class _Server:
    """`edgeops server run` as a supervised subprocess: restarted when it dies."""

    def __init__(self, settings: ServerSettings, log_path: Path) -> None:
        self._settings, self._log_path = settings, log_path
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def start(self, kill_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
        if kill_at:
            env[KILL_ENV] = kill_at
        with open(self._log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgeops.cli", "server", "run", "--home",
                 str(self._settings.home)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        try:
            wait_for_port(self._settings.http_host, self._settings.http_port, timeout_s=60)
        except TransportError as err:
            raise TransportError(f"the server did not start; see {self._log_path}") from err

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=15)


def _accuracy(agents: list[Agent], tests: list[tuple[NDArray[np.float32], NDArray[np.int64]]],
              indices: list[int], drift: Callable[[NDArray[np.float32]], NDArray[np.float32]]) -> float:
    correct = total = 0
    for i in indices:
        x, y = tests[i]
        predicted = agents[i].predict(drift(x)).classes
        correct += int((predicted == y).sum())
        total += len(y)
    return round(correct / max(total, 1), 4)


def _write_policy(settings: ServerSettings, text: str) -> None:
    from server.pipeline.policy import parse_policy

    parse_policy(text, "the loop's policy")  # refuse a bad policy before anything starts
    settings.pipeline_policy_path.write_text(text)


def run_loop(config: LoopConfig, progress: Progress = lambda _m: None) -> LoopResult:
    find_mosquitto()
    task: Task = load_task("digits")
    out = config.out_dir.resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def say(message: str) -> None:
        progress(f"[{time.monotonic() - t0:6.1f}s] {message}")

    with ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker(workdir=out / "broker"))
        settings = ServerSettings(
            home=out / "server", http_port=free_port(), broker_host=broker.host,
            broker_port=broker.port, monitor_window_s=config.window_s, monitor_interval_s=0.5,
            monitor_grace_s=1.0, monitor_min_count=40, pipeline_interval_s=0.5,
            simulated_fleet_dir=str(out / "agents"),
        )
        init_home(settings)
        settings = load_settings(settings.home)
        _write_policy(settings, config.policy_toml)
        kills = list(config.kill_at)
        server = _Server(settings, out / "server.log")
        server.start(kills.pop(0) if kills else None)
        stack.callback(server.stop)
        token = settings.admin_token_file.read_text().strip()
        api = FleetAPI(settings.resolved_public_url, token)
        stack.callback(api.close)
        http = httpx.Client(base_url=settings.resolved_public_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        stack.callback(http.close)

        say(f"training the champion on {config.devices} devices")
        sim = SimulationConfig(out_dir=out, devices=config.devices, rounds=config.champion_rounds,
                               local_epochs=config.champion_local_epochs, seed=config.seed)
        champion_run, _ = train_federated(sim, settings, lambda _m: None)
        package_run(champion_run, out / "champion")
        session_factory = open_database(settings.resolved_database_url)
        stack.callback(close_database, session_factory)
        champion = publish_release(settings, session_factory, out / "champion", "int8",
                                    actor="simulation")
        say(f"champion v{champion.version} published")

        data = task.load_data()
        train_parts = partition_devices(data.y_train, config.devices, None, seed=config.seed)
        test_parts = partition_devices(data.y_test, config.devices, None, seed=config.seed)
        pools = [(data.x_train[p], data.y_train[p]) for p in train_parts]
        tests = [(data.x_test[p], data.y_test[p]) for p in test_parts]
        trusted_root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
        agents: list[Agent] = []
        groups: list[str] = []
        for i in range(config.devices):
            device_id = f"device-{i:03d}"
            agent_config = AgentConfig(
                home=out / "agents" / device_id, device_id=device_id,
                server_url=settings.resolved_public_url, broker_host=broker.host,
                broker_port=broker.port, telemetry_interval_s=1.0, http_port=0,
                health_window_s=2.0, health_min_samples=0,
            )
            init_agent_home(agent_config.home, agent_config, trusted_root)
            agent = Agent(agent_config)
            agent.start()
            stack.callback(agent.stop)
            agents.append(agent)
            groups.append(config.groups[i % len(config.groups)])
        ids = [a.config.device_id for a in agents]
        wait_until("every agent to register",
                   lambda: {d["device_id"] for d in api.devices() if d["online"]} >= set(ids),
                   config.timeout_s)
        for device_id, group in zip(ids, groups, strict=True):
            response = http.put(f"/api/devices/{device_id}/labels", json={"group": group, "tags": []})
            response.raise_for_status()
        rollout = start_rollout(session_factory, RolloutSpec(
            target=champion.target_path, policy=RolloutPolicy(soak_s=0.5, device_timeout_s=120)),
            "loop")
        watch_rollout(api, rollout.id, config.timeout_s, lambda _m: None)
        say(f"every device runs v{champion.version}")

        drifted = [i for i, g in enumerate(groups) if g == config.drifted_group]
        control = [i for i, g in enumerate(groups) if g != config.drifted_group]

        def drift_fn(x: NDArray[np.float32]) -> NDArray[np.float32]:
            return drift_inputs(x, config.drift, config.drift_amount)

        figures: dict[str, Any] = {
            "accuracy_before": _accuracy(agents, tests, drifted, lambda x: x),
            "control_accuracy_before": _accuracy(agents, tests, control, lambda x: x),
        }
        traffic = _Traffic(agents, pools, groups, config)
        traffic.start()
        stack.callback(traffic.stop)
        time.sleep(config.baseline_s)

        onset = time.time()
        traffic.drift_on = config.drift != "none"
        traffic.labels_corrupted = config.label_fault == "shuffle"
        figures["accuracy_during"] = _accuracy(agents, tests, drifted, drift_fn)
        what = [f"drift {config.drift} {config.drift_amount:g}"] if traffic.drift_on else []
        what += ["labels corrupted"] if traffic.labels_corrupted else []
        say(f"{' and '.join(what) or 'nothing changes'} on {config.drifted_group}: accuracy "
            f"{figures['accuracy_before']:.3f} -> {figures['accuracy_during']:.3f}")

        if config.trigger == "manual":
            time.sleep(config.window_s * 3)  # fresh labelled data first
            response = http.post("/api/pipeline/runs", json={})
            if response.status_code == 409:  # the monitor was faster: follow its run
                say(f"a run is already in flight: {response.json().get('detail')}")
            elif response.status_code >= 400:
                raise TransportError(f"cannot start a pipeline run: {response.text}")

        run = _follow(config, session_factory, server, kills, http, say, onset)
        if run["status"] == "promoted":
            version = run["candidate_version"]
            wait_until(f"every device to run v{version}",
                       lambda: all(d.get("version") == version for d in api.devices()),
                       config.timeout_s)
            recovered = time.time()
            figures["recovered_s"] = round(recovered - onset, 1)
        figures["accuracy_after"] = _accuracy(agents, tests, drifted, drift_fn)
        figures["control_accuracy_after"] = _accuracy(agents, tests, control, lambda x: x)
        figures.update(_run_figures(run, onset))
        figures["feedback_labels_used"] = (run["results"].get("training") or {}).get(
            "feedback_examples")
        traffic.stop()
        versions = {d["device_id"]: d.get("version") for d in api.devices()}
        with session_factory() as session:
            from sqlalchemy import func, select

            from server.db.tables import Release
            from server.pipeline.training import recorded_training_runs

            trained = len(recorded_training_runs(session, run["id"]))
            releases = int(session.scalar(select(func.count()).select_from(Release)) or 0)
        say(f"pipeline run {run['id']} {run['status']}: {run.get('reason')}")
        return LoopResult(run=run, figures=figures, server_restarts=server.restarts,
                          device_versions=versions, training_runs=trained, releases=releases)
    raise AssertionError("unreachable")  # pragma: no cover


def _follow(config: LoopConfig, session_factory: Any, server: _Server, kills: list[str],
            http: httpx.Client, say: Progress, onset: float) -> dict[str, Any]:
    """Until the pipeline run ends: show its timeline, approve it if asked, restart the
    server when a fault killed it."""
    deadline = time.monotonic() + config.timeout_s
    shown = 0
    approved = False
    while time.monotonic() < deadline:
        if server.died():
            server.restarts += 1
            say(f"server died (exit {server.process.returncode if server.process else '?'}); "
                "restarting it")
            server.start(kills.pop(0) if kills else None)
        runs = service.list_runs(session_factory, limit=1)
        if runs:
            run = service.get_run(session_factory, runs[0]["id"])
            for entry in run["timeline"][shown:]:
                say(f"  run {run['id']} {entry['status']:<17} {entry['message']}")
            shown = len(run["timeline"])
            if run["status"] == "awaiting_approval" and config.approve and not approved:
                time.sleep(2.0)  # it waits for a person
                response = http.post(f"/api/pipeline/runs/{run['id']}/approve")
                approved = response.status_code < 400
            if run["status"] in FINAL_STATUSES:
                return run
        time.sleep(0.5)
    raise TransportError(f"the pipeline run did not end within {config.timeout_s:.0f} s")


def _run_figures(run: dict[str, Any], onset: float) -> dict[str, Any]:
    entered: dict[str, float] = {}
    for entry in run["timeline"]:
        entered.setdefault(entry["status"], entry["at"])
    figures: dict[str, Any] = {"detect_s": round(run["created_at"] - onset, 1)}
    if "gated" in entered:
        figures["candidate_s"] = round(entered["gated"] - onset, 1)
    return figures
