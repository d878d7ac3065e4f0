"""A process hosting some of a simulated fleet's agents, and their live traffic.

    python -m simulations.agent_host SPEC.json

The scenario engine starts several of these so that a fault can kill devices for real (a
SIGKILL of the process) and bring them back (a new process on the same agent homes: the
agents resume from what their homes hold, as on a device after a power cut).

SPEC (JSON): server_url, broker_host, broker_port, trusted_root (path), telemetry_interval_s,
rate_hz, feedback_share, feedback_delay_s, seed, devices: [{device_id, home, group, partition,
num_partitions, broker_port (optional: the device's own way to the broker, e.g. a relay)}]. Commands arrive on stdin as JSON lines, one reply per line on stdout:

    {"cmd": "drift", "group": g, "kind": "offset", "amount": 0.5}   drift a group's inputs
    {"cmd": "drift", "group": g, "kind": "none"}                      end it
    {"cmd": "label_fault", "group": g, "on": true}                    corrupt its labels
    {"cmd": "accuracy", "drifted": true}                              held-out [correct, total]
                                                                      per device
    {"cmd": "stats"}                                                  traffic counts, versions,
                                                                      peak RSS, threads
    {"cmd": "pause"}                                                  stop the traffic
    {"cmd": "stop"}

Traffic: one thread for every agent of the process (no per-agent traffic thread), each
device predicting `rate_hz` times a second on its share of the task's training split and
labelling `feedback_share` of its predictions. Accuracy is measured on the whole held-out
split as the device's group sees it now (its drift): a device's own share, 50 images in the
default fleet, moved a cohort's figure by up to 5 pp between runs of models whose accuracy on
the whole split differed by 1. Every telemetry batch an agent has put in its outbox is then appended to
`<home>/telemetry-sent.log`, so "nothing lost" can be checked against the server.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.config import AgentConfig, init_agent_home
from agent.daemon import Agent
from edgeops.errors import EdgeOpsError
from edgeops.messages import TelemetryBatch
from edgeops.tasks import load_task, partition_devices
from simulations.drifts import drift_inputs
from simulations.processes import peak_rss_mb

__all__ = ["SENT_LOG", "main"]

SENT_LOG = "telemetry-sent.log"


def _share(labels: NDArray[np.int64], count: int, index: int, seed: int) -> NDArray[np.int64]:
    """Device `index`'s share of a split cut `count` ways (the partitioner federated training
    uses); a fleet larger than the split gives each device one sample, shared cyclically."""
    if count <= len(labels):
        return np.asarray(partition_devices(labels, count, None, seed=seed)[index])
    return np.array([index % len(labels)])


class _CountingAgent(Agent):
    """An agent that notes the id of every telemetry batch it hands to its outbox."""

    def _publish_telemetry(self, batch: TelemetryBatch | None) -> None:
        super()._publish_telemetry(batch)  # in the outbox (on disk) when this returns
        if batch is not None:
            with open(self.config.home / SENT_LOG, "a") as log:
                log.write(batch.message_id + "\n")


@dataclass
class _Device:
    agent: Agent
    group: str
    pool: tuple[NDArray[np.float32], NDArray[np.int64]]
    test: tuple[NDArray[np.float32], NDArray[np.int64]]


class _Host:
    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = spec
        self._rng = np.random.default_rng(int(spec.get("seed", 0)))
        self._drift: dict[str, tuple[str, float]] = {}
        self._bad_labels: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._late: deque[tuple[float, _Device, str, int]] = deque()  # labels still on the way
        self.devices = self._start_agents()
        self.predictions = 0
        self.labels = 0
        self._thread = threading.Thread(target=self._traffic, name="traffic", daemon=True)
        self._thread.start()

    def _start_agents(self) -> list[_Device]:
        spec = self._spec
        data = load_task(spec.get("task", "digits")).load_data()
        trusted_root = Path(spec["trusted_root"]).read_bytes()
        devices = []
        for entry in spec["devices"]:
            count, seed = int(entry["num_partitions"]), int(spec.get("seed", 0))
            train = _share(data.y_train, count, int(entry["partition"]), seed)
            config = AgentConfig(
                home=Path(entry["home"]), device_id=entry["device_id"],
                server_url=spec["server_url"], broker_host=spec["broker_host"],
                broker_port=int(entry.get("broker_port", spec["broker_port"])),
                telemetry_interval_s=float(spec.get("telemetry_interval_s", 1.0)),
                http_port=None,  # the host calls predict() itself: no local API, no thread
                health_window_s=2.0, health_min_samples=0,
            )
            if not (config.home / "agent.toml").exists():
                init_agent_home(config.home, config, trusted_root)
            agent = _CountingAgent(config)
            agent.start()
            devices.append(_Device(agent, entry["group"], (data.x_train[train], data.y_train[train]),
                                   (data.x_test, data.y_test)))
        return devices

    def _inputs(self, device: _Device, x: NDArray[np.float32]) -> NDArray[np.float32]:
        kind, amount = self._drift.get(device.group, ("none", 0.0))
        return drift_inputs(x, kind, amount)

    def _traffic(self) -> None:
        period = 1.0 / float(self._spec.get("rate_hz", 10.0))
        share = float(self._spec.get("feedback_share", 1.0))
        delay = float(self._spec.get("feedback_delay_s", 0.0))
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                self._stop.wait(period)
                continue
            with self._lock:
                for device in self.devices:
                    x_pool, y_pool = device.pool
                    pick = self._pick(device, y_pool)
                    try:
                        prediction = device.agent.predict(self._inputs(device, x_pool[pick:pick + 1]))
                    except EdgeOpsError:
                        continue  # no model yet, or mid-update
                    self.predictions += 1
                    if self._rng.random() >= share:
                        continue
                    label = self._truth(device, int(y_pool[pick]), pick)
                    if device.group in self._bad_labels:
                        label = int(self._rng.integers(10))
                    self._late.append((time.monotonic() + delay, device,
                                       prediction.prediction_ids[0], label))
                self._deliver_labels()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _deliver_labels(self) -> None:
        """The true labels whose delay has passed reach their devices, oldest first."""
        now = time.monotonic()
        while self._late and self._late[0][0] <= now:
            _, device, prediction_id, label = self._late.popleft()
            try:
                device.agent.feedback(prediction_id, label)
                self.labels += 1
            except EdgeOpsError:
                pass  # the prediction is gone (the model changed, or too old): a lost label

    def _pick(self, device: _Device, labels: NDArray[np.int64]) -> int:
        """The next input's index; under a prior drift a share of them are digits 0-4."""
        kind, amount = self._drift.get(device.group, ("none", 0.0))
        if kind == "prior" and self._rng.random() < amount:
            return int(self._rng.choice(np.flatnonzero(labels < 5)))
        return int(self._rng.integers(len(labels)))

    def _truth(self, device: _Device, label: int, index: int) -> int:
        """The true label now: under a concept drift a share of the digits (the same ones
        every time) mean the next digit."""
        kind, amount = self._drift.get(device.group, ("none", 0.0))
        if kind == "concept" and (index * 2654435761 % 1000) / 1000 < amount:
            return (label + 1) % 10
        return label

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        cmd = command.get("cmd")
        with self._lock:
            if cmd == "drift":
                if command.get("kind", "none") == "none":
                    self._drift.pop(command["group"], None)
                else:
                    self._drift[command["group"]] = (command["kind"], float(command.get("amount", 0)))
                return {"ok": True}
            if cmd == "label_fault":
                (self._bad_labels.add if command.get("on", True) else self._bad_labels.discard)(
                    command["group"])
                return {"ok": True}
            if cmd == "accuracy":
                return self._accuracy(command.get("group"), bool(command.get("drifted", False)))
            if cmd == "pause":  # the scenario is over: let the outboxes drain
                self._paused.set()
                return {"ok": True}
            if cmd == "stats":
                return {"ok": True, "predictions": self.predictions, "labels": self.labels,
                        "peak_rss_mb": peak_rss_mb(),
                        "threads": threading.active_count(),
                        "versions": {d.agent.device_id: d.agent.status().version
                                     for d in self.devices}}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _accuracy(self, group: str | None, drifted: bool) -> dict[str, Any]:
        """Held-out [correct, total] per device (of `group`, or all), as the device sees it
        now (`drifted`: through its group's current drift)."""
        devices: dict[str, list[int]] = {}
        for device in self.devices:
            if group is not None and device.group != group:
                continue
            x, y = device.test
            inputs = self._inputs(device, x) if drifted else x
            if drifted:
                y = np.array([self._truth(device, int(v), i) for i, v in enumerate(y)])
            try:
                predicted = device.agent.predict(inputs).classes
            except EdgeOpsError:
                continue
            devices[device.agent.device_id] = [int((predicted == y).sum()), len(y)]
        return {"ok": True, "devices": devices}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for device in self.devices:
            device.agent.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m simulations.agent_host SPEC.json", file=sys.stderr)
        return 2
    host = _Host(json.loads(Path(args[0]).read_text()))
    print(json.dumps({"ok": True, "ready": [d.agent.device_id for d in host.devices]}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("cmd") == "stop":
                break
            print(json.dumps(host.handle(command)), flush=True)
    finally:
        host.stop()
    print(json.dumps({"ok": True, "stopped": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
