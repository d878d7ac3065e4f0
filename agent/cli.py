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
from edgeops.cli import JsonOption, emit, home_option
from edgeops.errors import ConfigError, UpdateError

app = typer.Typer(
    name="agent",
    help="Run a device agent: signed OTA model updates, local inference, MQTT telemetry.",
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path, home_option("The agent's home directory (settings, trust root, models).")
]


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
def enroll(
    home: HomeOption,
    token: Annotated[str, typer.Option("--token", help="One-time token from 'edgeops server enroll-token'")],
    server: Annotated[
        str | None, typer.Option("--server", help="Server base URL (default: the home's server_url)")
    ] = None,
    broker: Annotated[
        str | None, typer.Option("--broker", help="The broker's TLS listener as HOST:PORT")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Get this device's certificate from the fleet CA: the key pair is made here and never
    leaves the device; the server signs a CSR for the device id in exchange for the token.
    Afterwards the agent connects to the broker with TLS and that certificate."""
    from agent.enroll import enroll as enroll_device

    config = load_config(home)
    overrides: dict[str, Any] = {}
    if broker is not None:
        overrides["broker_host"], overrides["broker_port"] = _parse_broker(broker)
    if server is not None:
        overrides["server_url"] = server
    outcome = enroll_device(config, token, server_url=server, **overrides)
    emit(
        {
            "device_id": config.device_id,
            "mode": outcome.mode,
            "identity": str(config.identity.cert_file.parent),
            "not_after": outcome.not_after,
            "broker": f"{outcome.config.broker_host}:{outcome.config.broker_port}",
        },
        as_json,
        f"device {config.device_id} enrolled ({outcome.mode}); identity in "
        f"{config.identity.cert_file.parent}; broker TLS on",
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
    from agent.ota.model_store import SLOTS, ModelStore

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
            "model_card": record.release.model_card,  # the signed part, as the release had it
        }
    if pointer is not None:
        result["active"] = {"slot": pointer.slot, "previous": pointer.previous, **result["slots"][pointer.slot]}
    result.update(_update_status(config.home, result["active"]))
    return result


def _update_status(home: Path, active: dict[str, Any] | None) -> dict[str, Any]:
    """The DeviceStatus fields the agent would publish, from `<home>/update_state.json`."""
    from agent.ota.journal import UpdateJournal

    record = UpdateJournal(home).load()
    serving = active is not None and "error" not in active
    fields: dict[str, Any] = {
        "state": "running" if serving else "idle",
        "release": active.get("target") if serving and active else None,
        "target": None,
        "reason": None,
        "update": None,
    }
    if record is not None:
        fields.update(
            state=record.state,
            target=record.target,
            reason=record.reason,
            update={
                "state": record.state,
                "target": record.target,
                "slot": record.slot,
                "previous_target": record.previous_target,
                "attempts": record.attempts,
                "boots": record.boots,
                "started_at": record.started_at,
                "updated_at": record.updated_at,
                "history": [list(item) for item in record.history],
            },
        )
    return fields


def _card_summary(card: dict[str, Any]) -> str:
    """What the active model is and why, from the signed part of its model card."""
    details, ext = card.get("model_details", {}), card.get("edgeops", {})
    gates = ext.get("gates") or []
    passed = sum(1 for g in gates if g.get("passed"))
    return (f"model card: {details.get('version', {}).get('diff', '?')}; "
            f"gates {passed}/{len(gates)} passed; data {ext.get('data', {}).get('fingerprint')}")


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
    if active is not None and active.get("model_card"):
        human += "\n" + _card_summary(active["model_card"])
    if result.get("update"):
        human += f"\nlast update: {result['target']} {result['state']}"
        if result.get("reason"):
            human += f" ({result['reason']})"
    emit(result, as_json, human)
