"""A real fleet for rollout tests: Mosquitto, `edgeops server run` as a subprocess (so it can
be SIGKILLed and restarted), many real agents in this process, a prediction driver feeding
each agent its own inputs, and a sniffer counting every command the broker delivers.

Models: `logits = (x @ W) / (1 + k * x[:, 0])`, softmax. With k = 0 the model is confident
everywhere; with k > 0 it is the same model on inputs whose first feature is 0 and nearly
uniform (confidence ~0.1) on inputs whose first feature is large. A release with k > 0
therefore regresses only on the devices that see such inputs: their health window
(issue 3: mean confidence may drop by at most 0.10) rolls it back, the others commit it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
from scipy.special import softmax

from agent import Agent, AgentConfig, init_agent_home
from edgeops.messages import Command, decode
from simulations.mosquitto import MosquittoBroker, free_port, wait_for_port
from simulations.processes import stop_process
from tests.cli_support import REPO_ROOT
from tests.server.helpers import INPUT_SCHEMA, NUM_CLASSES, NUM_FEATURES, golden_for

BAD_FEATURE_VALUE = 16.0  # first feature of the inputs a regressing release fails on


def _base_weights() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 2.0, (NUM_FEATURES, NUM_CLASSES)).astype(np.float32)


def write_gated_model(path: Path, seed: int, k: float) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # One base model, slightly different per release: a healthy release is as confident as
    # the one before it on every input (within 0.01 on the test inputs), so only the gate `k`
    # changes a device's health. A 0.02 perturbation moved near-tied rows by up to 0.48: a
    # health window of a few samples that caught such a row rolled a healthy release back
    # on a loaded machine, where the window closes on few samples.
    base = _base_weights()
    weights = (base + np.random.default_rng(seed).normal(0, 1e-4, base.shape)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["logits"]),
            helper.make_node("Gather", ["input", "first"], ["x0"], axis=1),  # [N, 1]
            helper.make_node("Mul", ["x0", "k"], ["kx0"]),
            helper.make_node("Add", ["kx0", "one"], ["denominator"]),
            helper.make_node("Div", ["logits", "denominator"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=-1),
        ],
        "gated",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, NUM_CLASSES])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "first"),
            numpy_helper.from_array(np.array(k, dtype=np.float32), "k"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_gated_package(directory: Path, seed: int, k: float = 0.0, model: str = "digits") -> Path:
    """A package like `edgeops model package` writes, of the gated model above."""
    directory.mkdir(parents=True, exist_ok=True)
    release_info: dict[str, Any] = {}
    for fmt in ("fp32", "int8"):
        path = directory / f"model.{fmt}.onnx"
        write_gated_model(path, seed, k)
        release_info[fmt] = {
            "schema": 1, "model": model, "format": fmt, "input": INPUT_SCHEMA,
            "output_name": "probabilities", "num_classes": NUM_CLASSES,
            "golden": golden_for(path),
            # 100 agents per process on two shared cores, 100 of them switching models at
            # once: p95 latency then says more about the neighbours than the model (0.5 ms
            # before, 450 ms during a wave was measured). This release judges its health by
            # confidence and errors, and tolerates latency noise up to 5 s.
            "health": {"window_s": 1.0, "min_samples": 5, "latency_slack_ms": 5000.0},
        }
    report = {
        "sha256": {
            fmt: hashlib.sha256((directory / f"model.{fmt}.onnx").read_bytes()).hexdigest()
            for fmt in ("fp32", "int8")
        },
        "model": model,
        "task": "edgeops.tasks.digits:digits",
        "release_info": release_info,
        "metrics": {"fp32": {"accuracy": 0.97}, "int8": {"accuracy": 0.96}},
        "lineage": {"data_fingerprint": "b" * 64, "code_version": f"rollout-test-{seed}-{k}"},
    }
    (directory / "report.json").write_text(json.dumps(report))
    return directory


CLEAR_CONFIDENCE = 0.999


def inputs_for(bad_region: bool, seed: int, count: int = 16) -> np.ndarray:
    """`count` rows a device cycles through, each with a clear top class under every healthy
    release (confidence >= CLEAR_CONFIDENCE). The health window judges a few consecutive
    rows against a baseline over hundreds: with rows of mixed confidence, a window that
    caught the weak ones (0.5 among 1.0s) read as a drop of over 0.10 and rolled a healthy
    release back on a loaded machine, where the window closes on few samples."""
    rng = np.random.default_rng(seed)
    weights = _base_weights()
    kept: list[np.ndarray] = []
    while len(kept) < count:
        x = rng.uniform(0, 16, (count, NUM_FEATURES)).astype(np.float32)
        x[:, 0] = BAD_FEATURE_VALUE if bad_region else 0.0
        confidence = softmax(x @ weights, axis=1).max(axis=1)
        kept.extend(x[confidence >= CLEAR_CONFIDENCE])
    return np.stack(kept[:count])


def agent_supports_health_window() -> bool:
    return "health_window_s" in {f.name for f in dataclasses.fields(AgentConfig)}


# The test fleets serve plain HTTP and MQTT on loopback: opt in, as server.toml would.
INSECURE_LOOPBACK_ENV = {"EDGEOPS_SERVER_ALLOW_INSECURE_HTTP": "true",
                         "EDGEOPS_SERVER_ALLOW_INSECURE_MQTT": "true"}


class ServerProcess:
    """`python -m edgeops.cli server run --home ...`, killable and restartable."""

    def __init__(self, home: Path, host: str, port: int, log_path: Path) -> None:
        self.home, self.host, self.port, self.log_path = home, host, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgeops.cli", "-v", "server", "run", "--home",
                 str(self.home)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **INSECURE_LOOPBACK_ENV},
            )
        wait_for_port(self.host, self.port, timeout_s)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a power cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=15)


class CommandSniffer:
    """Counts every command the broker delivers on `<prefix>/devices/+/cmd`."""

    def __init__(self, broker: MosquittoBroker, prefix: str = "edgeops/default") -> None:
        self.received: dict[str, list[Command]] = defaultdict(list)
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"sniffer-{os.getpid()}", protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/devices/+/cmd", qos=1)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("command sniffer could not subscribe")

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        device_id = message.topic.split("/")[-2]
        command = decode(Command, message.payload)
        with self._lock:
            self.received[device_id].append(command)

    def updates(self, target: str) -> dict[str, int]:
        """How many update commands for `target` each device was sent."""
        with self._lock:
            return {
                d: sum(1 for c in cmds if c.kind == "update" and c.target == target)
                for d, cmds in self.received.items()
            }

    def kinds(self, device_id: str, target: str) -> list[str]:
        with self._lock:
            return [c.kind for c in self.received.get(device_id, []) if c.target == target]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class PredictionDriver:
    """Feeds every agent its own inputs, ~`rate_hz` calls a second each, on one thread."""

    def __init__(self, agents: list[Agent], inputs: Callable[[int], np.ndarray],
                 rate_hz: float = 10.0) -> None:
        self._agents = agents
        self._inputs = [inputs(i) for i in range(len(agents))]
        self._period_s = 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-driver", daemon=True)

    def start(self) -> PredictionDriver:
        self._thread.start()
        return self

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            started = time.monotonic()
            for agent, x in zip(self._agents, self._inputs):
                row = x[turn % len(x)][np.newaxis, :]
                try:
                    agent.predict(row)
                except Exception:  # no model yet, or switching: the agent counts it
                    pass
            turn += 1
            self._stop.wait(max(0.0, self._period_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def start_agents(
    count: int, root: Path, server_url: str, broker: MosquittoBroker, trusted_root: bytes,
    first: int = 0, **overrides: Any,
) -> list[Agent]:
    """`count` real agents (own homes, MQTT sessions and ORT sessions) in this process.
    Overrides the installed AgentConfig does not know are left out."""
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    extra = {k: v for k, v in overrides.items() if k in fields}
    agents = []
    for i in range(first, first + count):
        config = AgentConfig(
            home=root / f"device-{i:03d}", device_id=f"device-{i:03d}", server_url=server_url,
            broker_host=broker.host, broker_port=broker.port, **extra,
        )
        init_agent_home(config.home, config, trusted_root)
        agents.append(Agent(config).start())
    return agents


class AgentPools:
    """Agents spread over subprocesses of `per_pool` (see tests/server/rollouts/agent_pool.py)."""

    def __init__(self, root: Path, count: int, per_pool: int, **spec: Any) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self._root = root
        for first in range(0, count, per_pool):
            spec_file = root / f"pool-{first}.json"
            spec_file.write_text(json.dumps({
                "root": str(root / "agents"), "first": first,
                "count": min(per_pool, count - first), **spec,
            }))
            log = open(root / f"pool-{first}.log", "wb")
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.server.rollouts.agent_pool", "--spec", str(spec_file)],
                stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
            ))
        for process in self.processes:
            line = process.stdout.readline() if process.stdout else b""
            if line.strip() != b"ready":
                self.stop()
                raise RuntimeError(f"an agent pool did not start; see {root}/pool-*.log")

    def log_lines(self, device_id: str, limit: int = 10) -> list[str]:
        """The last `limit` lines the pools logged about `device_id` (their warnings say why
        an update failed or rolled back), for a failing test to show."""
        needle = f"device {device_id}:"
        lines = [line for log in sorted(self._root.glob("pool-*.log"))
                 for line in log.read_text(errors="replace").splitlines() if needle in line]
        return lines[-limit:]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Api:
    """The REST calls the tests make."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    def devices(self) -> dict[str, dict[str, Any]]:
        try:
            response = self.http.get("/api/devices")
        except httpx.TransportError:
            return {}
        return {d["device_id"]: d for d in response.json()} if response.status_code == 200 else {}

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        try:
            response = self.http.get(f"/api/rollouts/{rollout_id}")
        except httpx.TransportError:
            return {}
        return response.json() if response.status_code == 200 else {}

    def rollout_devices(self, rollout_id: int) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/rollouts/{rollout_id}/devices")
        response.raise_for_status()
        return response.json()

    def start_rollout(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/api/rollouts", json=body)
        assert response.status_code == 201, response.text
        return response.json()


def wait_for(probe: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


__all__ = [
    "AgentPools",
    "Api",
    "CommandSniffer",
    "INSECURE_LOOPBACK_ENV",
    "PredictionDriver",
    "ServerProcess",
    "agent_supports_health_window",
    "free_port",
    "inputs_for",
    "make_gated_package",
    "start_agents",
    "wait_for",
]


class SimulatedDevices:
    """Lightweight devices: one paho client each, answering `update` with `committed` after
    `delay_s` and `rollback` with `running` on the previous release. No onnxruntime."""

    def __init__(self, broker: MosquittoBroker, device_ids: list[str], release: str | None,
                 *, delay_s: float = 0.2, prefix: str = "edgeops/default") -> None:
        from edgeops.messages import DeviceStatus, encode

        self._clients: list[mqtt.Client] = []
        self._timers: list[threading.Timer] = []
        ready = threading.Semaphore(0)
        for device_id in device_ids:
            state = {"release": release, "previous": None}
            topic = f"{prefix}/devices/{device_id}/status"

            def publish(client: mqtt.Client, st: str, active: str | None, target: str | None,
                        device_id: str = device_id, topic: str = topic) -> None:
                status = DeviceStatus(device_id=device_id, online=True, state=st,  # type: ignore[arg-type]
                                      release=active, target=target)
                client.publish(topic, encode(status), qos=1, retain=True)

            def on_connect(client: mqtt.Client, *_a: Any, device_id: str = device_id,
                           state: dict = state, publish: Callable = publish) -> None:
                client.subscribe(f"{prefix}/devices/{device_id}/cmd", qos=1)
                publish(client, "running", state["release"], None)
                ready.release()

            def on_message(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage,
                           state: dict = state, publish: Callable = publish) -> None:
                command = decode(Command, message.payload)
                if command.kind == "update":
                    publish(client, "downloading", state["release"], command.target)

                    def commit() -> None:
                        state["previous"], state["release"] = state["release"], command.target
                        publish(client, "committed", command.target, command.target)

                    timer = threading.Timer(delay_s, commit)
                    self._timers.append(timer)
                    timer.start()
                elif command.kind == "rollback" and state["previous"] is not None:
                    state["release"], state["previous"] = state["previous"], None
                    publish(client, "running", state["release"], command.target)

            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                 protocol=mqtt.MQTTv5)
            client.on_connect = on_connect
            client.on_message = on_message
            client.connect(broker.host, broker.port)
            client.loop_start()
            self._clients.append(client)
        for _ in device_ids:
            if not ready.acquire(timeout=10):
                raise RuntimeError("a simulated device did not connect")

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
