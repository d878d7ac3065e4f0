"""`edgeops server`: create a server home and run the server."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import JsonOption, emit
from edgeops.errors import ConfigError
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
    broker_port: Annotated[
        int | None, typer.Option(help="MQTT broker port (default 8883 with TLS, else 1883).")
    ] = None,
    database_url: Annotated[
        str, typer.Option(envvar="EDGEOPS_SERVER_DATABASE_URL",
                          help="SQLAlchemy URL (default: SQLite registry.db in the home). One "
                          "with a password only from EDGEOPS_SERVER_DATABASE_URL, never typed "
                          "on the command line.")
    ] = "",
    fleet: Annotated[str, typer.Option(help="Fleet name used in MQTT topics.")] = "default",
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Serve plain HTTP instead of HTTPS (a laptop or test setup; "
        "writes allow_insecure_http = true).")] = False,
    insecure_mqtt: Annotated[bool, typer.Option(
        "--insecure-mqtt", help="Talk to the broker without TLS (a laptop or test setup; "
        "writes allow_insecure_mqtt = true).")] = False,
    offline_keys: Annotated[Path | None, typer.Option(
        "--offline-keys", help="Folder outside the home for the three TUF root keys, one file "
        "each, to hand to their holders (default: <home>.root-keys).")] = None,
    root_passphrase_files: Annotated[list[Path] | None, typer.Option(
        "--root-passphrase-file", help="File with the passphrase that encrypts the root keys "
        "('-': stdin; give it 3 times for one per key). Default: $EDGEOPS_ROOT_KEY_PASSPHRASE; "
        "neither: the keys are written in clear to --offline-keys.")] = None,
    ca_passphrase_file: Annotated[Path | None, typer.Option(
        "--ca-passphrase-file", help="File with the passphrase that encrypts the fleet CA key "
        "at rest; the server reads it at start (writes ca_key_passphrase_file).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a new server home: settings, database, artifact store, TUF keys and metadata,
    and an admin token. Refuses a folder that is not empty.

    The TUF root keys (2 of 3 sign a new root) are written outside the home, to
    --offline-keys, encrypted when a passphrase is given: move each to its own offline
    holder. The server keeps only the targets, snapshot and timestamp keys.

    Secure by default: the server serves HTTPS with a certificate from the fleet CA and
    connects to the broker with TLS and a client certificate (`edgeops server
    broker-config` writes a broker config to match)."""
    from server.app.home import init_home
    from server.cli.keys import root_custody
    from server.identity.ca import ca_key_passphrase

    _refuse_password_on_command_line(database_url)
    settings = ServerSettings(
        home=home.expanduser().resolve(),
        database_url=database_url,
        http_host=http_host,
        http_port=http_port,
        public_url=public_url,
        broker_host=broker_host,
        broker_port=broker_port or (1883 if insecure_mqtt else 8883),
        fleet=fleet,
        http_tls=not insecure_http,
        allow_insecure_http=insecure_http,
        broker_tls=not insecure_mqtt,
        allow_insecure_mqtt=insecure_mqtt,
        ca_key_passphrase_file=str(ca_passphrase_file.resolve()) if ca_passphrase_file else "",
    )
    ca_key_passphrase(settings)  # readable now, not at the first enrollment
    custody = root_custody(settings.home, offline_keys, root_passphrase_files or [])
    info = init_home(settings, root_custody=custody)
    result = {
        "home": str(info.home),
        "settings": str(info.settings_file),
        "database": info.database_url if not database_url else "(from --database-url)",
        "artifacts": str(info.artifacts_dir),
        "tuf": str(info.tuf_dir),
        "trusted_root": str(info.tuf_dir / "metadata" / "1.root.json"),
        "admin_token_file": str(info.admin_token_file),
        "public_url": settings.resolved_public_url,
        "root_keys": str(info.root_keys_dir),
        "root_keys_encrypted": bool(custody.passphrases),
        "ca_key_encrypted": bool(settings.ca_key_passphrase_file),
    }
    in_clear = "" if custody.passphrases else ", in clear"
    emit(
        result,
        as_json,
        f"Created server home {info.home}\n"
        f"  TUF root for agents: {result['trusted_root']}\n"
        f"  admin token:         {info.admin_token_file}\n"
        f"  TUF root keys:       {info.root_keys_dir} (2 of 3 sign a new root{in_clear}):\n"
        f"                       move each file to its own offline holder; the server needs none\n"
        f"Start it with: edgeops server run --home {info.home}",
    )


def _warn_of_online_root_keys(settings: ServerSettings) -> None:
    from server.trust.keys import online_root_keys
    from server.trust.repository import TufRepository

    online = online_root_keys(TufRepository(settings.tuf_dir))
    if online:
        typer.echo(
            f"warning: {len(online)} TUF root key(s) are online in {online[0].parent}: whoever "
            "takes this server can sign a new root. Move them offline (docs/security.md)",
            err=True,
        )


def _refuse_password_on_command_line(database_url: str) -> None:
    """A database password typed as `--database-url` shows in `ps` and shell history."""
    import click
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    source = click.get_current_context().get_parameter_source("database_url")
    if source is not click.core.ParameterSource.COMMANDLINE or not database_url:
        return
    try:
        password = make_url(database_url).password
    except (ArgumentError, ValueError):
        return  # not a URL: opening the database reports it, with any password masked
    if password:
        raise ConfigError(
            "--database-url carries a password, which the command line shows to every user "
            "(ps, shell history): set EDGEOPS_SERVER_DATABASE_URL instead"
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
    """Run the server until interrupted: HTTPS (TUF repository, registry and fleet API) and
    MQTT ingest of device status and telemetry from the broker in server.toml.

    Plain HTTP and MQTT without TLS are refused unless server.toml allows them
    (allow_insecure_http, allow_insecure_mqtt); then each prints a warning."""
    import uvicorn

    from server.app.build import build_app
    from server.app.http_server import uvicorn_limits
    from server.config.settings import check_transport, load_settings

    settings = load_settings(home)
    if http_host is not None:
        settings = replace(settings, http_host=http_host)
    if http_port is not None:
        settings = replace(settings, http_port=http_port)
    for warning in check_transport(settings):
        typer.echo(f"warning: {warning}", err=True)
    _warn_of_online_root_keys(settings)
    cert_file = key_file = None
    if settings.http_tls:
        from server.identity.https import server_tls

        files = server_tls(settings)
        cert_file, key_file = str(files.cert_file), str(files.key_file)
    app_ = build_app(settings)
    logger.info("serving on %s://%s:%d", "https" if cert_file else "http", settings.http_host,
                settings.http_port)
    uvicorn.run(app_, host=settings.http_host, port=settings.http_port, log_level="info",
                ssl_certfile=cert_file, ssl_keyfile=key_file, **uvicorn_limits())

app.add_typer(__import__("server.cli.broker", fromlist=["app"]).app)  # broker-config, enroll-token
app.add_typer(__import__("server.cli.prometheus", fromlist=["app"]).app)  # prometheus-config
app.add_typer(__import__("server.cli.ingest", fromlist=["app"]).app)  # ingest --workers N
app.add_typer(keys_app, name="keys")
