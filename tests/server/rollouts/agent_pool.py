"""Run a pool of real agents in one process until SIGTERM (used by the rollout tests).

    python -m tests.server.rollouts.agent_pool --spec pool.json

Why a separate process: every agent holds ~6 file descriptors (MQTT socket, paho's wake-up
socket pair, its SQLite outbox with WAL and SHM), and paho-mqtt waits on `select()`, which
cannot watch a descriptor numbered 1024 or above: past ~165 agents, one process's agents
start dropping their connections. The tests therefore spread 200 agents over pools of 100.

The spec (JSON): root, first, count, server_url, broker_host, broker_port, trusted_root
(path), agent (AgentConfig overrides), bad_every (every n-th device sees the inputs a
regressing release fails on), rate_hz. Prints "ready" once every agent has started.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from simulations.mosquitto import MosquittoBroker  # noqa: F401 (type only in fleet_support)
from tests.server.rollouts.fleet_support import PredictionDriver, inputs_for, start_agents


class _Broker:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[argv.index("--spec") + 1]).read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    agents = start_agents(
        spec["count"], Path(spec["root"]), spec["server_url"],
        _Broker(spec["broker_host"], spec["broker_port"]),  # type: ignore[arg-type]
        Path(spec["trusted_root"]).read_bytes(), first=spec["first"], **spec.get("agent", {}),
    )
    bad_every = int(spec.get("bad_every", 0))
    first = int(spec["first"])
    driver = PredictionDriver(
        agents,
        lambda i: inputs_for(bool(bad_every) and (first + i) % bad_every == bad_every - 1,
                             seed=first + i),
        rate_hz=float(spec.get("rate_hz", 10.0)),
    ).start()
    print("ready", flush=True)
    stop.wait()
    driver.stop()
    for agent in agents:
        agent.stop(timeout_s=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
