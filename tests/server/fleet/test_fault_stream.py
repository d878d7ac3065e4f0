"""Nothing lost, nothing twice: agents stream through a broker outage and a SIGKILL.

Three real agents, each in its own process (so one can be SIGKILLed), stream deterministic
telemetry windows over TLS to a real Mosquitto; real ingest writes them to SQLite. Midway
the broker is stopped for 10 s and restarted, and one agent is SIGKILLed during the outage
and restarted. The database must end with every window exactly once: the same number of
rows and readings, and the same checksum over (message id, readings) as the plan.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from server.db.tables import TelemetryRecord
from server.fleet.ingest.worker import Ingest, IngestTuning
from tests.agent.support import build_model, install_model, make_release, model_weights
from tests.cli_support import REPO_ROOT
from tests.integration.fleet_support import sqlite_database, wait_until
from tests.server.fleet.stream_agent import expected_windows
from tests.server.identity.secure_fleet import FLEET, SecureFleet

pytestmark = [pytest.mark.telemetry, pytest.mark.integration, pytest.mark.faults]

REPO = REPO_ROOT


def checksum(rows: dict[str, int]) -> str:
    digest = hashlib.sha256()
    for message_id in sorted(rows):
        digest.update(f"{message_id}:{rows[message_id]}\n".encode())
    return digest.hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    with sqlite_database(tmp_path) as factory:
        yield factory


class AgentProcess:
    def __init__(self, spec: dict, log: Path) -> None:
        self.spec = spec
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.server.fleet.stream_agent", json.dumps(self.spec)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        self.process.wait()

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)


def _stored(db: sessionmaker) -> dict[str, int]:
    with db() as session:
        rows = session.execute(select(TelemetryRecord.message_id, TelemetryRecord.count,
                                      TelemetryRecord.payload))
        stored = {}
        for message_id, count, payload in rows:
            assert sum(payload["predicted_classes"]) == count  # content arrived intact
            stored[message_id] = count
        return stored


def run_fault_scenario(
    fleet: SecureFleet, db: sessionmaker, tmp_path: Path, *, devices: int, windows: int,
    period_s: float, outage_s: float,
) -> None:
    weights = model_weights(1)
    model, release = build_model(weights), make_release(1, weights)
    names = [f"stream-{i}" for i in range(devices)]
    agents = []
    for index, name in enumerate(names):
        home = tmp_path / "agents" / name
        install_model(home, release, model)
        fleet.ca.device_identity(name, home / "identity")
        spec = {"home": str(home), "device_id": name, "broker_port": fleet.broker.port,
                "fleet": FLEET, "index": index, "windows": windows, "period_s": period_s}
        agents.append(AgentProcess(spec, tmp_path / f"{name}.log"))
    plan = expected_windows(names, windows)
    assert sum(plan.values()) >= 5000

    ingest = Ingest(fleet.settings, db, tuning=IngestTuning(batch_max_wait_s=0.05))
    ingest.start()
    try:
        assert ingest.wait_ready(10)
        for agent in agents:
            agent.start()
        stream_s = windows * period_s
        wait_until(lambda: len(_stored(db)) >= len(plan) // 5, timeout_s=stream_s, what="stream")

        fleet.broker.stop()  # graceful: Mosquitto saves the sessions it holds
        outage_started = time.monotonic()
        time.sleep(outage_s / 3)
        agents[0].sigkill()  # with telemetry in its outbox that never reached the broker
        agents[0].start()
        time.sleep(max(0.0, outage_s - (time.monotonic() - outage_started)))
        fleet.broker.start()

        for agent in agents:
            code = agent.wait(timeout_s=stream_s + 120)
            assert code == 0, agent.log.read_text()[-3000:]
        wait_until(lambda: len(_stored(db)) >= len(plan), timeout_s=60,
                   what=f"{len(plan)} windows stored")
        time.sleep(0.5)  # anything extra would show up now
        stored = _stored(db)
    finally:
        ingest.stop()
        for agent in agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.sigkill()

    assert len(stored) == len(plan)
    assert sum(stored.values()) == sum(plan.values())
    assert checksum(stored) == checksum(plan)
    assert "started at window 0" not in agents[0].log.read_text().splitlines()[-2]  # resumed


def test_every_reading_arrives_once_through_a_broker_outage_and_an_agent_sigkill(
    fleet: SecureFleet, db: sessionmaker, tmp_path: Path
) -> None:
    run_fault_scenario(fleet, db, tmp_path, devices=3, windows=80, period_s=0.2, outage_s=10.0)


@pytest.mark.slow
def test_every_reading_arrives_once_at_scale(
    fleet: SecureFleet, db: sessionmaker, tmp_path: Path
) -> None:
    run_fault_scenario(fleet, db, tmp_path, devices=8, windows=400, period_s=0.1, outage_s=30.0)
