"""`edgeops server`: create a server home and run the server."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import JsonOption, emit
from server.cli.keys import app as keys_app
from server.config.settings import ServerSettings

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="server",
    help="Create and run the EdgeOps server (registry, TUF repository, HTTP API).",
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path,
    typer.Option(
        "--home", help="The server home folder (settings, database, artifacts, TUF keys)."
    ),
]


@app.command("init")
def init(
    home: HomeOption,
    http_host: Annotated[str, typer.Option(help="Address the HTTP server binds to.")] = "127.0.0.1",
    http_port: Annotated[
        int, typer.Option(help="Port of the HTTP server (TUF repository and API).")
    ] = 8080,
    public_url: Annotated[
        str, typer.Option(help="URL agents use to reach this server (default: http://host:port).")
    ] = "",
    broker_host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    broker_port: Annotated[int, typer.Option(help="MQTT broker port.")] = 1883,
    database_url: Annotated[
        str, typer.Option(help="SQLAlchemy URL (default: SQLite registry.db in the home).")
    ] = "",
    fleet: Annotated[str, typer.Option(help="Fleet name used in MQTT topics.")] = "default",
    as_json: JsonOption = False,
) -> None:
    """Create a new server home: settings, database, artifact store, TUF keys and metadata,
    and an admin token. Refuses a folder that is not empty."""
    from server.app.home import init_home

    settings = ServerSettings(
        home=home.expanduser().resolve(),
        database_url=database_url,
        http_host=http_host,
        http_port=http_port,
        public_url=public_url,
        broker_host=broker_host,
        broker_port=broker_port,
        fleet=fleet,
    )
    info = init_home(settings)
    result = {
        "home": str(info.home),
        "settings": str(info.settings_file),
        "database": info.database_url if not database_url else "(from --database-url)",
        "artifacts": str(info.artifacts_dir),
        "tuf": str(info.tuf_dir),
        "trusted_root": str(info.tuf_dir / "metadata" / "1.root.json"),
        "admin_token_file": str(info.admin_token_file),
        "public_url": settings.resolved_public_url,
    }
    emit(
        result,
        as_json,
        f"Created server home {info.home}\n"
        f"  TUF root for agents: {result['trusted_root']}\n"
        f"  admin token:         {info.admin_token_file}\n"
        f"Start it with: edgeops server run --home {info.home}",
    )


@app.command("run")
def run(
    home: HomeOption,
    http_host: Annotated[
        str | None, typer.Option(help="Override the bind address from server.toml.")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Override the port from server.toml.")
    ] = None,
) -> None:
    """Run the server until interrupted: HTTP (TUF repository, registry and fleet API) and
    MQTT ingest of device status and telemetry from the broker in server.toml."""
    import uvicorn

    from server.app.build import build_app
    from server.config.settings import load_settings

    settings = load_settings(home)
    if http_host is not None:
        settings = replace(settings, http_host=http_host)
    if http_port is not None:
        settings = replace(settings, http_port=http_port)
    app_ = build_app(settings)
    logger.info("serving on http://%s:%d", settings.http_host, settings.http_port)
    uvicorn.run(app_, host=settings.http_host, port=settings.http_port, log_level="info")

app.add_typer(__import__("server.cli.broker", fromlist=["app"]).app)  # broker-config, enroll-token
app.add_typer(keys_app, name="keys")
