"""`edgeops server ingest --workers N` as a user runs it: stores telemetry, stops on SIGTERM,
and refuses a bad N or a bad database URL with a clear message and the config exit code."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.exit_codes import ExitCode
from edgeops.messages import TelemetryBatch, encode
from edgeops.topics import Topics
from server.config.settings import ServerSettings, save_settings
from server.db.engine import close_database, open_database
from simulations.mosquitto import MosquittoBroker
from tests.cli_support import REPO_ROOT, run_edgeops
from tests.integration.fleet_support import device_client, wait_until
from tests.server.fleet.test_fault_stream import _stored

pytestmark = [pytest.mark.telemetry, pytest.mark.integration, pytest.mark.e2e]


def _home(tmp_path: Path, port: int, database_url: str = "") -> Path:
    home = tmp_path / "server"
    home.mkdir(exist_ok=True)
    save_settings(ServerSettings(
        home=home, fleet="f1", broker_port=port, database_url=database_url,
        broker_tls=False, allow_insecure_mqtt=True, http_tls=False, allow_insecure_http=True,
    ))
    return home


def _stored_one(db: sessionmaker) -> bool:
    return _stored(db) == {"dev-1-w00001": 3}


def test_ingest_workers_store_telemetry_and_stop_cleanly_on_sigterm(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    home = _home(tmp_path, mosquitto.port)
    command = subprocess.Popen(
        [sys.executable, "-m", "edgeops.cli", "server", "ingest", "--home", str(home),
         "--workers", "2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    db = open_database(f"sqlite:///{home / 'registry.db'}")
    try:
        topics = Topics.for_fleet("f1")
        with device_client(mosquitto.port, "dev-1") as device:

            def published_and_stored() -> bool:  # workers may still be subscribing
                batch = TelemetryBatch(message_id="dev-1-w00001", device_id="dev-1",
                                       window_start=1, window_end=2, count=3, errors=0,
                                       predicted_classes=[3])
                device.publish(topics.telemetry("dev-1"), encode(batch), qos=1)
                return _stored_one(db)

            wait_until(published_and_stored, timeout_s=60, what="telemetry stored")
        workers = psutil.Process(command.pid).children(recursive=True)
        assert len(workers) >= 2

        command.send_signal(signal.SIGTERM)
        output, _ = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
        close_database(db)

    assert command.returncode == 0, output
    assert "2 worker(s)" in output and "stopping" in output
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--workers", "0", "--workers must be within 1..64, not 0"),
    ("--workers", "-2", "--workers must be within 1..64, not -2"),
    ("--first-worker", "0", "--first-worker must be >= 1, not 0"),
])
def test_ingest_refuses_a_bad_worker_number(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    home = _home(tmp_path, 1883)
    result = run_edgeops("server", "ingest", "--home", str(home), option, value, cwd=REPO_ROOT)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert message in result.stderr


def test_ingest_refuses_a_bad_database_url(tmp_path: Path) -> None:
    home = _home(tmp_path, 1883, database_url="nosuchdb://nowhere/x")
    result = run_edgeops("server", "ingest", "--home", str(home), "--workers", "2",
                         cwd=REPO_ROOT)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "cannot open database URL" in result.stderr
