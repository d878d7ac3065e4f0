"""`edgeops agent ...`: enroll a device home, run the agent, show what it runs.

Imports nothing from `server`; the heavy agent modules load only inside the commands.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.config import DEFAULT_CLI_HTTP_PORT, AgentConfig, init_agent_home, load_config
from edgeops.cli import emit
from edgeops.errors import ConfigError, UpdateError

app = typer.Typer(
    name="agent",
    help="Run a device agent: signed OTA model updates, local inference, MQTT telemetry.",
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path, typer.Option("--home", help="The agent's home directory (settings, trust root, models).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--broker {value!r} must be HOST:PORT")
    try:
        return host, int(port)
    except ValueError as err:
        raise ConfigError(f"--broker {value!r}: port {port!r} is not a number") from err


@app.command()
def init(
    home: HomeOption,
    device_id: Annotated[str, typer.Option("--device-id", help="Unique id: letters, digits, . _ -")],
    server: Annotated[str, typer.Option("--server", help="Server base URL, e.g. http://host:8000")],
    broker: Annotated[str, typer.Option("--broker", help="MQTT broker as HOST:PORT")],
    root: Annotated[
        Path, typer.Option("--root", help="Trusted TUF root.json from the server (the trust anchor)")
    ],
    username: Annotated[str | None, typer.Option("--username", help="Broker username")] = None,
    password: Annotated[str | None, typer.Option("--password", help="Broker password")] = None,
    fleet: Annotated[str, typer.Option("--fleet", help="Fleet name in the topic prefix")] = "default",
    http_port: Annotated[
        int, typer.Option("--http-port", help="Local inference API port on 127.0.0.1 (-1 disables)")
    ] = DEFAULT_CLI_HTTP_PORT,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing home's settings")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create an agent home: settings in agent.toml and the trusted TUF root."""
    try:
        trusted_root = root.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the trusted root {root}: {err}") from err
    host, port = _parse_broker(broker)
    config = AgentConfig(
        home=home,
        device_id=device_id,
        server_url=server,
        broker_host=host,
        broker_port=port,
        broker_username=username,
        broker_password=password,
        fleet=fleet,
        http_port=None if http_port < 0 else http_port,
    )
    saved = init_agent_home(home, config, trusted_root, force=force)
    emit(
        {"home": str(home), "config": saved.redacted()},
        as_json,
        f"agent home ready at {home} for device {device_id}\n"
        f"run it with: edgeops agent run --home {home}",
    )


@app.command()
def run(home: HomeOption) -> None:
    """Run the agent until SIGINT or SIGTERM, then publish `offline` and exit."""
    from agent.daemon import Agent

    config = load_config(home)
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    agent = Agent(config).start()
    typer.echo(
        f"agent {config.device_id} running (state {agent.state}"
        + (f", API {agent.http_url}" if agent.http_url else "")
        + "); Ctrl-C stops it",
        err=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(f"agent {config.device_id} stopped", err=True)


def local_status(home: Path) -> dict[str, Any]:
    """What the home says is installed, read from disk only."""
    from agent.model_store import SLOTS, ModelStore

    config = load_config(home)
    store = ModelStore(config.home)
    result: dict[str, Any] = {
        "device_id": config.device_id,
        "home": str(config.home),
        "active": None,
        "slots": {},
    }
    pointer = store.active_pointer()
    for slot in SLOTS:
        try:
            record = store.read_slot(slot)
        except UpdateError as err:
            result["slots"][slot] = {"error": str(err)}
            continue
        result["slots"][slot] = {
            "target": record.target,
            "model": record.release.model,
            "version": record.release.version,
            "format": record.release.format,
            "sha256": record.sha256,
        }
    if pointer is not None:
        result["active"] = {"slot": pointer.slot, "previous": pointer.previous, **result["slots"][pointer.slot]}
    return result


@app.command()
def status(home: HomeOption, as_json: JsonOption = False) -> None:
    """Show the active model and both slots, from local state (no network)."""
    result = local_status(home)
    active = result["active"]
    if active is None:
        human = f"device {result['device_id']}: no model installed"
    elif "error" in active:
        human = f"device {result['device_id']}: active slot {active['slot']} is broken: {active['error']}"
    else:
        human = (
            f"device {result['device_id']}: {active['model']} v{active['version']} "
            f"({active['format']}) in slot {active['slot']}"
        )
    emit(result, as_json, human)
