"""Ingest scaling: 1 worker on SQLite, 1, 2 and 4 workers on PostgreSQL, vs a bare subscriber.

    .venv/bin/python benchmarks/bench_ingest.py --quick     (under a minute)
    .venv/bin/python benchmarks/bench_ingest.py --full

For each setup an `IngestPool` (real worker processes on the shared subscription) connects
and subscribes, then its workers are frozen (SIGSTOP) while N telemetry batches of
100 readings are published at QoS 1: the broker queues them in the workers' sessions and in
the session of a bare paho subscriber that only counts. The bare subscriber drains the
stream alone (timed from its connect to its N-th message), then the workers are thawed
(SIGCONT) and drain the same stream into the database (timed until N rows are there).
Freezing connected workers keeps process start-up (imports, migrations, TLS) out of the
timing, as it is for the bare subscriber.

    <setup>_ratio = <setup> readings/s ÷ bare readings/s, each the best of its trials, the bare
    drains being those of the same setup (minutes apart, load on a shared machine drifts)
    targets: sqlite_1_worker_ratio >= 0.8 and postgres_ratio_<n> >= 0.8 for the workers together

The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_telemetry import (  # noqa: E402 - after the path fix
    READINGS_PER_BATCH,
    BareSubscriber,
    publish_batches,
)

DEVICES = 100
POSTGRES_WORKERS = (1, 2, 4)


def _rows(factory) -> int:  # noqa: ANN001 - a sessionmaker
    from sqlalchemy import func, select

    from server.db.tables import TelemetryRecord

    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(TelemetryRecord)) or 0)


def _signal_all(pids: list[int | None], signum: int) -> None:
    for pid in pids:
        assert pid is not None, "a worker died"
        os.kill(pid, signum)


def bench_setup(
    port: int, workdir: Path, database: Callable[[], object], workers: int, messages: int,
    trials: int, bare: BareSubscriber,
) -> tuple[list[float], list[float]]:
    """(bare seconds, ingest seconds) per trial of `messages` queued batches (see the
    docstring); one pool for every trial, so worker start-up is paid once."""
    from server.config.settings import ServerSettings
    from server.fleet.ingest.pool import IngestPool

    bare_times, ingest_times = [], []
    with database() as (factory, url):  # type: ignore[attr-defined]
        settings = ServerSettings(home=workdir, broker_port=port, fleet="bench")
        pool = IngestPool(settings, workers=workers, database_url=url, log_level=logging.WARNING)
        pool.start()
        try:
            assert pool.wait_ready(60), "ingest workers did not subscribe"
            for trial in range(trials):
                pids = pool.worker_pids()
                _signal_all(pids, signal.SIGSTOP)
                try:
                    bare.subscribe_then_leave()
                    publish_batches(port, "bench", 0, messages, DEVICES)
                    bare_times.append(bare.drain_s(messages))
                finally:
                    started = time.perf_counter()
                    _signal_all(pids, signal.SIGCONT)
                wanted = (trial + 1) * messages
                deadline = time.monotonic() + 300
                while (stored := _rows(factory)) < wanted and time.monotonic() < deadline:
                    time.sleep(0.05)  # a count every 50 ms: little load on the database it times
                ingest_times.append(time.perf_counter() - started)
                assert stored == wanted, f"{workers} worker(s) stored {stored} of {wanted}"
        finally:
            pool.stop()
    return bare_times, ingest_times


@contextmanager
def sqlite(path: Path) -> Iterator[tuple[object, str]]:
    from server.db.engine import close_database, open_database

    url = f"sqlite:///{path}"
    factory = open_database(url)
    try:
        yield factory, url
    finally:
        close_database(factory)


@contextmanager
def postgres() -> Iterator[tuple[object, str]]:
    from tests.integration.fleet_support import postgres_database

    with postgres_database() as factory:  # its own schema, dropped afterwards
        yield factory, factory.kw["bind"].url.render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="8,000 batches, best of 2 trials")
    mode.add_argument("--full", action="store_true", help="50,000 batches, best of 3 trials")
    args = parser.parse_args()
    messages, trials = (50_000, 3) if args.full else (8_000, 2)

    from simulations.mosquitto import MosquittoBroker

    setups: list[tuple[str, int]] = [("sqlite", 1), *(("postgres", n) for n in POSTGRES_WORKERS)]
    bare_times: list[float] = []
    best: dict[tuple[str, int], float] = {}
    best_bare: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        broker = MosquittoBroker(workdir=workdir / "broker").start()
        bare = BareSubscriber(broker.port, "bench")
        try:
            for name, workers in setups:
                def database(n: str = name, w: int = workers):  # noqa: ANN202
                    return sqlite(workdir / f"{n}-{w}.db") if n == "sqlite" else postgres()
                started = time.perf_counter()
                bare_s, ingest_s = bench_setup(broker.port, workdir, database, workers,
                                               messages, trials, bare)
                bare_times += bare_s
                best[name, workers] = min(ingest_s)
                best_bare[name, workers] = min(bare_s)
                print(f"[{name} x{workers} {time.perf_counter() - started:.1f} s] bare "
                      f"{', '.join(f'{t:.2f}' for t in bare_s)} s, ingest "
                      f"{', '.join(f'{t:.2f}' for t in ingest_s)} s", file=sys.stderr)
        finally:
            broker.kill()
    readings = messages * READINGS_PER_BATCH

    def ratio(setup: tuple[str, int]) -> float:  # against the bare drains of the same setup
        return round(best_bare[setup] / best[setup], 3)

    summary: dict[str, object] = {
        "messages": messages,
        "readings_per_message": READINGS_PER_BATCH,
        "bare_readings_per_s": round(readings / min(bare_times)),
        "sqlite_1_worker_readings_per_s": round(readings / best["sqlite", 1]),
        "sqlite_1_worker_ratio": ratio(("sqlite", 1)),
    }
    for n in POSTGRES_WORKERS:
        summary[f"postgres_readings_per_s_{n}"] = round(readings / best["postgres", n])
        summary[f"postgres_ratio_{n}"] = ratio(("postgres", n))
    summary["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    summary["mode"] = "full" if args.full else "quick"
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
