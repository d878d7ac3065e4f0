"""`edgeops server ingest`: MQTT ingest alone, in several worker processes. Merged into
`edgeops server` (server/cli/server.py adds this app)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import home_option
from edgeops.errors import ConfigError
from edgeops.signals import stop_on_signals

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = typer.Typer()

HomeOption = Annotated[Path, home_option("The server home folder (server.toml names the "
                                         "broker and the database).")]


@app.command("ingest")
def ingest(
    home: HomeOption,
    workers: Annotated[int, typer.Option(
        "--workers", "-n", help="Worker processes on the shared telemetry subscription "
        "(1..64). Each has its own MQTT client id: the first the single server's, the i-th "
        "'<that>-<i>'.")] = 1,
    first_worker: Annotated[int, typer.Option(
        "--first-worker", help="Number of the first worker: 2 while `edgeops server run` "
        "(whose own ingest is worker 1) runs against the same broker.")] = 1,
) -> None:
    """Run only the MQTT ingest of device status and telemetry, in N worker processes that
    split the telemetry stream (MQTT 5 shared subscription) and write to the database in
    server.toml, until SIGTERM or Ctrl-C. The HTTP server and the monitor read the same
    database. Several workers pay off on PostgreSQL, whose writers run in parallel (SQLite
    serializes them).

    `edgeops server run` ingests too, as worker 1: next to it, start the extra workers with
    `--first-worker 2` (two processes with one MQTT client id take the connection from
    each other).

    Every reading is stored exactly once: a worker acknowledges a message only after
    storing it; a worker that dies is restarted under the same client id and gets its
    unacknowledged messages again, and duplicates are skipped by message id.

    On a secured broker every worker needs a broker identity: for workers 2 and 3, write
    the broker config with `edgeops server broker-config --server-client
    edgeops-server-ingest-2 --server-client edgeops-server-ingest-3 ...`.

    Examples: edgeops server ingest --home /srv/edgeops --workers 4
              edgeops server ingest --home /srv/edgeops --workers 3 --first-worker 2"""
    from server.config.settings import check_transport, load_settings
    from server.fleet.ingest.pool import MAX_WORKERS, IngestPool

    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be within 1..{MAX_WORKERS}, not {workers}")
    if first_worker < 1:
        raise ConfigError(f"--first-worker must be >= 1, not {first_worker}")
    settings = load_settings(home)
    for warning in check_transport(settings):
        typer.echo(f"warning: {warning}", err=True)
    pool = IngestPool(settings, workers=workers, first_index=first_worker)
    with stop_on_signals() as stop:
        try:
            pool.start()
            typer.echo(f"ingest: {workers} worker(s) as {', '.join(pool.client_ids)}; "
                       "stop with Ctrl-C or SIGTERM", err=True)
            while not stop.wait(0.5):
                pass
            typer.echo("ingest: stopping (writing and acknowledging what the workers hold)",
                       err=True)
        finally:
            pool.stop()
