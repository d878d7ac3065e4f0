"""A real Agent in its own process, streaming deterministic telemetry windows (fault tests,
benchmarks): `python -m tests.server.fleet.stream_agent <json spec>`.

Window k of device d holds `readings(index, k)` predictions on inputs seeded by (index, k)
and is flushed with message id `<d>-w<k>`, then `<home>/progress` records k + 1. After a
SIGKILL the restarted process resumes at the recorded window: a window that reached the
outbox but not the progress file is replayed with the same id and the same content, which
ingest stores once. So the server must end with exactly `expected_windows(...)`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

NUM_FEATURES = 64


def readings(index: int, window: int) -> int:
    return 15 + (7 * window + 3 * index) % 21


def message_id(device_id: str, window: int) -> str:
    return f"{device_id}-w{window:05d}"


def expected_windows(devices: list[str], windows: int) -> dict[str, int]:
    """message id -> readings, for every window of every device."""
    return {
        message_id(device, k): readings(index, k)
        for index, device in enumerate(devices)
        for k in range(windows)
    }


def main(spec: dict) -> int:
    from agent.config import AgentConfig
    from agent.daemon import Agent

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    home = Path(spec["home"])
    progress = home / "progress"
    start = int(progress.read_text()) if progress.exists() else 0
    config = AgentConfig(
        home=home,
        device_id=spec["device_id"],
        server_url="http://127.0.0.1:9",
        broker_port=spec["broker_port"],
        broker_tls=spec.get("tls", True),
        fleet=spec["fleet"],
        telemetry_interval_s=3600.0,  # windows are flushed explicitly
        mqtt_reconnect_min_s=1,
        mqtt_reconnect_max_s=2,
    )
    agent = Agent(config).start()
    print(f"started at window {start}", flush=True)
    index, period_s = spec["index"], spec["period_s"]
    for k in range(start, spec["windows"]):
        rng = np.random.default_rng([index, k])
        inputs = rng.uniform(0, 16, (readings(index, k), NUM_FEATURES)).astype(np.float32)
        agent.predict(inputs)
        agent.flush_telemetry(message_id=message_id(config.device_id, k))
        fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, str(k + 1).encode())  # the page cache survives a SIGKILL
        os.close(fd)
        time.sleep(period_s)
    link = agent.link
    deadline = time.monotonic() + spec.get("drain_timeout_s", 120.0)
    while link is not None and link.stats().outbox_messages and time.monotonic() < deadline:
        time.sleep(0.1)
    left = link.stats().outbox_messages if link is not None else -1
    agent.stop(timeout_s=10)
    print(f"done, {left} left in the outbox", flush=True)
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
