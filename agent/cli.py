"""`edgeops agent ...`: enroll a device home, run the agent (or install it as a systemd
service), show what it runs.

Imports nothing from `server`; the heavy agent modules load only inside the commands.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from agent.config import DEFAULT_CLI_HTTP_PORT, AgentConfig, init_agent_home, load_config
from agent.logging_setup import LOG_FORMATS
from edgeops.cli import JsonOption, emit, home_option
from edgeops.cli_secrets import read_secret
from edgeops.errors import ConfigError, UpdateError
from edgeops.signals import stop_on_signals

logger = logging.getLogger(__name__)

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
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="File holding the broker password ('-': standard input)")] = None,
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
        broker_password=read_secret(password_file, what="broker password"),
        fleet=fleet,
        http_port=None if http_port < 0 else http_port,
    )
    saved = init_agent_home(home, config, trusted_root, force=force)
    emit(
        {"home": str(home), "config": saved.redacted(), "api_token_file": str(saved.api_token_path)},
        as_json,
        f"agent home ready at {home} for device {device_id}\n"
        f"local API clients send 'Authorization: Bearer' with the token in {saved.api_token_path}\n"
        f"run it with: edgeops agent run --home {home}",
    )


@app.command()
def enroll(
    home: HomeOption,
    ca_fingerprint: Annotated[str, typer.Option(
        "--ca-fingerprint", help="The fleet CA's SHA-256 fingerprint, as 'edgeops server "
        "enroll-token' printed it with the token: a server offering another CA is refused")],
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding the one-time token from 'edgeops server "
        "enroll-token' ('-': standard input); or set EDGEOPS_ENROLL_TOKEN")] = None,
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
    token = read_secret(token_file, what="enrollment token", env_var="EDGEOPS_ENROLL_TOKEN")
    if token is None:
        raise ConfigError("no enrollment token: pass --token-file PATH (or - for standard input) "
                          "or set EDGEOPS_ENROLL_TOKEN")
    overrides: dict[str, Any] = {}
    if broker is not None:
        overrides["broker_host"], overrides["broker_port"] = _parse_broker(broker)
    if server is not None:
        overrides["server_url"] = server
    outcome = enroll_device(config, token, ca_fingerprint=ca_fingerprint, server_url=server,
                            **overrides)
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


LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="text (a terminal), journal (systemd's journal: <priority> prefix, no time) or json "
        "(one object per line, for collectors); auto picks journal under systemd. Every line "
        "carries device_id, release and rollout_id.",
        click_type=click.Choice(LOG_FORMATS),
    ),
]


@app.command()
def run(home: HomeOption, log_format: LogFormatOption = "auto") -> None:
    """Run the agent until SIGINT or SIGTERM, then publish `offline` and exit.

    Under systemd (Type=notify) it reports ready once serving and feeds the watchdog while
    its threads are alive."""
    from agent.daemon import Agent
    from agent.logging_setup import configure_logging, resolve_log_format, rollout_id_of
    from agent.systemd_notify import Notifier

    config = load_config(home)
    chosen = resolve_log_format(log_format, os.environ, sys.stderr)
    with stop_on_signals() as stop:
        agent = Agent(config)
        configure_logging(
            chosen,
            lambda: {
                "device_id": config.device_id,
                "release": agent.status().release,
                "rollout_id": rollout_id_of(agent.last_command_id),
            },
        )
        notifier = Notifier.from_environment(os.environ)
        agent.start()
        summary = f"agent {config.device_id} running (state {agent.state}" + (
            f", API {agent.http_url}" if agent.http_url else ""
        ) + ")"
        _announce(chosen, f"{summary}; Ctrl-C stops it")
        notifier.ready(summary)
        try:
            while not stop.wait(notifier.tick_s):
                if agent.alive:
                    notifier.feed_watchdog()
                # else: a thread died; no more WATCHDOG=1, so systemd restarts the agent
        finally:
            notifier.stopping()
            agent.stop()
    _announce(chosen, f"agent {config.device_id} stopped")


def _announce(log_format: str, message: str) -> None:
    """A line for whoever watches: on the terminal as it always was, as a log record (with
    its fields) for the journal and collectors."""
    if log_format == "text":
        typer.echo(message, err=True)
    else:
        logger.info("%s", message)


@app.command("install-service")
def install_service(
    home: HomeOption,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the unit (default: /etc/systemd/system/NAME.service)."
        ),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="The unit's name, without .service.")] = "edgeops-agent",
    user: Annotated[str, typer.Option("--user", help="The dedicated system user it runs as.")] = "edgeops",
    memory_max: Annotated[
        str, typer.Option("--memory-max", help="systemd MemoryMax=: the cgroup's memory cap.")
    ] = "512M",
    watchdog_s: Annotated[
        int, typer.Option("--watchdog-s", min=0, help="WatchdogSec=: restart the agent if it stops "
                          "reporting alive for this long (0: no watchdog).")
    ] = 30,
    as_json: JsonOption = False,
) -> None:
    """Write a systemd unit that runs this agent as a confined service and print how to
    enable it.

    The unit runs `edgeops agent run --home HOME` as a dedicated user, restarts it on
    failure or when the watchdog starves, lets it write only to its home
    (ProtectSystem=strict, ReadWritePaths), forbids privilege gain (NoNewPrivileges), caps
    its memory (MemoryMax) and sends its logs to the journal with device_id, release and
    rollout_id fields.

    Example:  sudo edgeops agent install-service --home /var/lib/edgeops-agent"""
    from agent.service import (
        DEFAULT_UNIT_DIR,
        ServiceSpec,
        edgeops_command,
        enable_instructions,
        write_unit,
    )

    config = load_config(home)  # a home that is not initialised fails here, not at boot
    spec = ServiceSpec(
        home=config.home.resolve(),
        command=edgeops_command(),
        name=name,
        user=user,
        memory_max=memory_max,
        watchdog_s=watchdog_s,
    )
    path = write_unit(spec, output if output is not None else DEFAULT_UNIT_DIR / spec.unit_name)
    steps = enable_instructions(spec, path)
    emit(
        {"unit": str(path), "name": spec.unit_name, "user": spec.user, "enable": steps},
        as_json,
        f"wrote {path}\nenable it with:\n" + "\n".join(f"  {step}" for step in steps),
    )


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
