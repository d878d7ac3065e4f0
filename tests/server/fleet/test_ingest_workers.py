"""Nothing lost, nothing twice, with several ingest workers on PostgreSQL and kills.

Four devices publish deterministic telemetry windows over TLS (client certificates, ACLs)
to a real Mosquitto; three `IngestPool` worker processes, each with its own broker
identity, split the stream on the shared subscription and write to one PostgreSQL schema.
Mid-stream one worker is SIGKILLed, later another: the pool restarts each under its client
id, which resumes its session and the messages it had not acknowledged. The database must
end with every window exactly once (rows, readings, checksum as in test_fault_stream) and
the devices' telemetry counters must add up to the same number of windows.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from edgeops.messages import TelemetryBatch, encode
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.db.tables import Device
from server.fleet.ingest.pool import IngestPool, worker_client_id
from server.identity.broker_config import write_broker_config
from server.identity.ca import FleetCA
from simulations.mosquitto import MosquittoBroker, free_port
from tests.integration.fleet_support import postgres_database, wait_until
from tests.server.fleet.stream_agent import expected_windows, message_id, readings
from tests.server.fleet.test_fault_stream import _stored, checksum
from tests.server.identity.secure_fleet import FLEET, tls_client

pytestmark = [pytest.mark.telemetry, pytest.mark.integration, pytest.mark.faults]

WORKERS = 3
DEVICES = 4
WINDOWS = 300
PERIOD_S = 0.025  # 4 devices x 40 windows/s: a stream of about 7.5 s


@dataclasses.dataclass
class Fleet:
    settings: ServerSettings
    broker: MosquittoBroker
    ca: FleetCA
    tmp: Path


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A secured broker whose ACL grants every worker's identity (--server-client)."""
    home = tmp_path / "server"
    home.mkdir()
    settings = ServerSettings(home=home, fleet=FLEET, broker_tls=True)
    workdir, port = tmp_path / "broker", free_port("127.0.0.1")
    extra = [worker_client_id(settings, i) for i in range(2, WORKERS + 1)]
    spec = write_broker_config(
        settings, workdir, port=port, bind_host="127.0.0.1", hosts=("127.0.0.1", "localhost"),
        data_dir=workdir, log_file=workdir / "mosquitto.log", extra_server_clients=extra,
    ).spec
    broker = MosquittoBroker(workdir=workdir, port=port, auth=spec.auth, tls=spec.tls,
                             acl_file=spec.acl_file, password_file=spec.password_file).start()
    try:
        yield Fleet(dataclasses.replace(settings, broker_port=port), broker, FleetCA.load(home),
                    tmp_path)
    finally:
        broker.kill()


@pytest.fixture
def pg() -> Iterator[tuple[sessionmaker, str]]:
    """A migrated PostgreSQL schema of its own and the URL that reaches it."""
    with postgres_database() as factory:  # skips if PostgreSQL is unreachable
        yield factory, factory.kw["bind"].url.render_as_string(hide_password=False)


def _publish(fleet: Fleet, index: int, device_id: str, failures: list[BaseException]) -> None:
    topics = Topics.for_fleet(FLEET)
    try:
        identity = fleet.ca.device_identity(device_id, fleet.tmp / "devices" / device_id)
        with tls_client(fleet.broker.port, identity, client_id=device_id) as client:
            for window in range(WINDOWS):
                count = readings(index, window)
                batch = TelemetryBatch(message_id=message_id(device_id, window),
                                       device_id=device_id, window_start=window,
                                       window_end=window + 1, count=count, errors=0,
                                       predicted_classes=[count, 0, 0])
                info = client.publish(topics.telemetry(device_id), encode(batch), qos=1)
                threading.Event().wait(PERIOD_S)
            info.wait_for_publish(30)
    except BaseException as err:  # noqa: BLE001 - reported by the test thread
        failures.append(err)


def _telemetry_counters(db: sessionmaker) -> int:
    with db() as session:
        return int(session.scalar(select(func.sum(Device.telemetry_messages))) or 0)


def test_every_reading_is_stored_once_by_several_workers_with_kills_on_postgres(
    fleet: Fleet, pg: tuple[sessionmaker, str]
) -> None:
    db, url = pg
    names = [f"pub-{i}" for i in range(DEVICES)]
    plan = expected_windows(names, WINDOWS)
    pool = IngestPool(fleet.settings, workers=WORKERS, database_url=url, restart_delay_s=0.2)
    failures: list[BaseException] = []
    publishers = [threading.Thread(target=_publish, args=(fleet, i, name, failures))
                  for i, name in enumerate(names)]
    pool.start()
    try:
        assert pool.wait_ready(30), "workers did not connect and subscribe"
        for publisher in publishers:
            publisher.start()
        for victim, share in ((1, 1 / 3), (2, 2 / 3)):  # worker 2 at 1/3, worker 3 at 2/3
            wanted = share * len(plan)
            wait_until(lambda: len(_stored(db)) >= wanted, timeout_s=30,  # noqa: B023
                       what=f"{share:.0%} of the stream stored")
            pid = pool.worker_pids()[victim]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # with batches received but not yet acknowledged
        for publisher in publishers:
            publisher.join(60)
        assert not failures, failures
        wait_until(lambda: len(_stored(db)) >= len(plan), timeout_s=30,
                   what=f"{len(plan)} windows stored")
        threading.Event().wait(0.5)  # anything extra would show up now
        stored = _stored(db)
        assert pool.restarts >= 2
        assert pool.wait_ready(10), "a killed worker did not come back"
    finally:
        pool.stop()

    assert len(stored) == len(plan)
    assert sum(stored.values()) == sum(plan.values())
    assert checksum(stored) == checksum(plan)
    assert _telemetry_counters(db) == len(plan)  # no window counted twice either


def test_worker_client_ids_are_distinct_and_stable() -> None:
    open_broker = ServerSettings(home=Path("/srv/h"), fleet="f")
    secured = dataclasses.replace(open_broker, broker_tls=True)
    ids = [worker_client_id(open_broker, i) for i in (1, 2, 3)]
    assert len(set(ids)) == 3 and ids[1] == f"{ids[0]}-2"
    assert worker_client_id(secured, 1) == "edgeops-server-ingest"
    assert worker_client_id(secured, 2) == "edgeops-server-ingest-2"  # --server-client name
    with pytest.raises(ConfigError):
        worker_client_id(open_broker, 0)
    beside_server_run = IngestPool(secured, workers=2, first_index=2)  # run's ingest is 1
    assert beside_server_run.client_ids == ["edgeops-server-ingest-2", "edgeops-server-ingest-3"]


@pytest.mark.parametrize("workers", [0, -1, 65])
def test_a_pool_refuses_a_bad_number_of_workers(workers: int) -> None:
    with pytest.raises(ConfigError, match="workers"):
        IngestPool(ServerSettings(home=Path("/srv/h")), workers=workers)


def test_a_pool_refuses_a_bad_database_url_before_starting_any_worker(tmp_path: Path) -> None:
    pool = IngestPool(ServerSettings(home=tmp_path), workers=2, database_url="nosuch://x")
    with pytest.raises(ConfigError, match="database"):
        pool.start()
    assert pool.worker_pids() == [None, None]
