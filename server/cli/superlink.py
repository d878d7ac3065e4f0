"""`edgeops superlink`: Flower's SuperLink for devices, with only its Fleet API exposed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer

from edgeops.errors import ConfigError, MissingDependencyError, TransportError

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="superlink",
    help="Run Flower's SuperLink for federated training on devices.",
    no_args_is_help=True,
)

_RUN_HELP = (
    "Start `flower-superlink` (TLS, SuperNode authentication, no `uv sync` at run time) on "
    "loopback and a gateway that serves only its Fleet API on --fleet-host/--fleet-port, "
    "the address devices use. The Control API (`flwr supernode register`, `flwr run`, "
    "`flwr ls`) and the Runtime API stay on --control-host (loopback by default; any other "
    "address is refused unless --control-oidc turns on Flower's account authentication). "
    "Runs until interrupted.\n\n"
    "Example:  edgeops superlink --ca ca.crt --cert server.pem --key server.key "
    "--state-dir /var/lib/edgeops-superlink --fleet-host 0.0.0.0 --fleet-port 9092"
)


@app.command("run", help=_RUN_HELP)
def run(
    ca: Annotated[
        Path, typer.Option("--ca", help="CA certificate the SuperLink's certificate chains to.")
    ],
    cert: Annotated[
        Path,
        typer.Option(
            "--cert", help="Server TLS certificate (names every address devices and operators use)."
        ),
    ],
    key: Annotated[Path, typer.Option("--key", help="Server TLS private key.")],
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            help="SuperLink state (database, FLWR_HOME): the working folder and HOME of its ServerApps; keep it outside the server home.",
        ),
    ],
    fleet_host: Annotated[
        str, typer.Option(help="Address devices reach the Fleet API on.")
    ] = "0.0.0.0",
    fleet_port: Annotated[
        int, typer.Option(help="Fleet API port (what `flower-supernode --superlink` names).")
    ] = 9092,
    control_host: Annotated[
        str, typer.Option(help="Address of the SuperLink itself (Control and Runtime APIs).")
    ] = "127.0.0.1",
    control_port: Annotated[
        int,
        typer.Option(
            help="Port of the SuperLink itself (the `address` of the operator's [superlink.<name>] connection)."
        ),
    ] = 9093,
    control_oidc: Annotated[
        bool,
        typer.Option(
            "--control-oidc",
            help="Turn on Flower's OIDC account authentication for the Control API (needs a Flower distribution that has it); only then may --control-host be non-loopback.",
        ),
    ] = False,
    server_home: Annotated[
        Path | None,
        typer.Option(
            "--server-home", help="The server home, to check that --state-dir lies outside it."
        ),
    ] = None,
) -> None:
    import uvicorn

    from server.federated.fleet_gateway import FleetGateway
    from server.federated.superlink_launch import SuperLinkRequest, TlsFiles, plan_superlink

    executable = shutil.which("flower-superlink")
    if executable is None:
        raise MissingDependencyError(
            "flower-superlink is not on PATH: pip install 'edgeops[server]'"
        )
    tls = TlsFiles(ca_file=ca, cert_file=cert, key_file=key)
    plan = plan_superlink(
        SuperLinkRequest(
            tls=tls,
            state_dir=state_dir,
            fleet_host=fleet_host,
            fleet_port=fleet_port,
            control_host=control_host,
            control_port=control_port,
            control_oidc=control_oidc,
            server_home=server_home,
        ),
        os.environ,
        executable=executable,
    )
    plan.cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
    # SIGTERM (systemd, kill) must reach the `finally` below, which stops the SuperLink;
    # uvicorn installs its own handler while it serves and restores this one after.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with (plan.cwd / "superlink.log").open("ab") as log:
        superlink = subprocess.Popen(
            plan.command,
            cwd=plan.cwd,
            env=dict(plan.env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_tls(plan.upstream_url, ca, superlink)
        typer.echo(
            f"SuperLink (Control, Runtime) on {control_host}:{control_port}, log "
            f"{plan.cwd / 'superlink.log'}; Fleet API for devices on {fleet_host}:{fleet_port}",
            err=True,
        )
        uvicorn.run(
            FleetGateway(plan.upstream_url, ca),
            host=fleet_host,
            port=fleet_port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="info",
            timeout_keep_alive=30,
        )
    finally:
        _stop(superlink)


def _wait_for_tls(url: str, ca: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    host, _, port = url.removeprefix("https://").rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(
                f"flower-superlink exited with code {proc.returncode} (see superlink.log "
                "in the state folder)"
            )
        try:
            with socket.create_connection((host, int(port)), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname=host):
                    return
        except OSError:
            time.sleep(0.2)
    raise TransportError(f"flower-superlink did not serve TLS on {url} within {timeout_s:.0f} s")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the SuperLink (its SuperExec watches it and exits when it does)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
