"""A small agent entry point for fault-injection tests (run as a subprocess).

    python -m tests.agent.ota.fault_driver --home HOME [--target TARGET]
        [--switch-window HH:MM-HH:MM] [--clock-offset SECONDS]

Like `edgeops agent run`, it loads the settings with `load_config` (so
`EDGEOPS_AGENT_FAULT_POINT` reaches the agent as `fault_point`), starts the agent and
keeps inference traffic flowing; with `--target` it asks for that update unless the
home's saved update already concerns it. It exits 0 once the update of TARGET is
committed, failed or rolled back, printing the final status as one JSON line.
`--switch-window` asks for an update that holds staged until that window (UTC);
`--clock-offset` shifts the agent's clock, so a test decides whether the window is open.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agent import Agent, load_config
from edgeops.messages import Command

TERMINAL = {"committed", "update_failed", "rolled_back"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--switch-window", default=None)
    parser.add_argument("--clock-offset", type=float, default=0.0)
    args = parser.parse_args()
    offset = args.clock_offset
    agent = Agent(load_config(args.home), clock=lambda: time.time() + offset).start()
    stop = threading.Event()
    rng = np.random.default_rng(0)

    def traffic() -> None:
        while not stop.is_set():
            try:
                agent.predict(rng.uniform(0, 16, (4, 64)).astype(np.float32))
            except Exception:
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    record = agent.update_record
    if record is None or record.target != args.target:
        time.sleep(0.4)  # a baseline for the health window
        window = args.switch_window
        agent.submit_command(Command(kind="update", target=args.target,
                                     switch="window" if window else None, switch_window=window))
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            record = agent.update_record
            if record is not None and record.target == args.target and record.state in TERMINAL:
                status = agent.status()
                print(json.dumps({
                    "state": status.state,
                    "target": status.target,
                    "release": status.release,
                    "reason": status.reason,
                    "history": [s for s, _ in record.history],
                }))
                return 0
            time.sleep(0.02)
        return 2
    finally:
        stop.set()
        agent.stop(timeout_s=1)


if __name__ == "__main__":
    sys.exit(main())
