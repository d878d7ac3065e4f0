"""`edgeops fleet`: the devices, their groups and tags, their certificates, and API tokens."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from edgeops.cli import emit
from edgeops.errors import ConfigError
from server.cli.api_client import HomeOption, JsonOption, ServerOption, TokenOption, connect

__all__ = ["app"]

app = typer.Typer(
    name="fleet",
    help="The fleet as the server sees it: devices, groups and tags, certificates, API tokens.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(name="tokens", help="API tokens with roles (admin only).",
                         no_args_is_help=True)
app.add_typer(tokens_app)


@app.command("ls")
def ls(
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only devices with this tag (repeat).")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List devices: presence, state, release, group and tags."""
    params: dict[str, object] = {}
    if group:
        params["group"] = group
    if tag:
        params["tag"] = tag
    devices = connect(home, server, token).get("/api/devices", params=params)
    online = sum(1 for d in devices if d["online"])
    lines = [
        f"{d['device_id']:<24} {'online' if d['online'] else 'offline':<8} "
        f"{(d['state'] or '-'):<14} {(d['release'] or '-'):<40} {d.get('group', 'default')}"
        + (f" [{', '.join(d['tags'])}]" if d.get("tags") else "")
        for d in devices
    ]
    lines.append(f"{len(devices)} devices, {online} online, {len(devices) - online} offline")
    emit({"devices": devices}, as_json, "\n".join(lines))


@app.command("label")
def label(
    device_id: Annotated[str, typer.Argument(help="The device id.")],
    group: Annotated[str, typer.Option(help="The device's group.")] = "default",
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeat); replaces the old ones.")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put a device in a group and give it tags (operator)."""
    client = connect(home, server, token)
    result = client.request("PUT", f"/api/devices/{device_id}/labels",
                            json={"group": group, "tags": tag or []})
    emit(result, as_json, f"{device_id}: group {result['group']}, tags {result['tags']}")


@app.command("revoke")
def revoke(
    device_id: Annotated[str, typer.Argument(help="The device whose certificates to revoke.")],
    broker_pid: Annotated[int | None, typer.Option(
        "--broker-pid", help="Mosquitto's process id on this machine: send it SIGHUP so it "
                             "rereads the CRL at once.")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke every certificate of a device (admin): the server rewrites the fleet CA's CRL
    and every copy `edgeops server broker-config` installed (`crlfile`). The broker refuses
    the device once it rereads the CRL: pass --broker-pid, or run `systemctl reload
    mosquitto`. The device can come back only with a token bound to its id."""
    result = connect(home, server, token).post("/api/enroll/revocations",
                                               json={"device_id": device_id})
    if broker_pid is not None:
        reload_broker(broker_pid)
    serials = result["revoked_serials"]
    emit({**result, "broker_reloaded": broker_pid is not None}, as_json,
         f"{device_id}: {len(serials)} certificate(s) revoked; CRL written to "
         + ", ".join(result["crl_files"])
         + ("" if broker_pid is not None else
            "\n  reload the broker so it rereads the CRL (SIGHUP: --broker-pid PID)"))


def reload_broker(pid: int) -> None:
    """SIGHUP to Mosquitto `pid`: it rereads its config, ACL and CRL files."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as err:
        raise ConfigError(f"no broker process {pid} to reload: {err}") from err
    except PermissionError as err:
        raise ConfigError(f"not allowed to signal broker process {pid}: {err}") from err


@tokens_app.command("create")
def create_token(
    name: Annotated[str, typer.Argument(help="The token's name (unique), e.g. ada or ci-deploy.")],
    person: Annotated[str | None, typer.Option(
        "--person", help='The token belongs to this person, e.g. "Ada Lovelace".')] = None,
    service: Annotated[str | None, typer.Option(
        "--service", help='The token belongs to a program, e.g. "ci deploy bot" '
                          "(service tokens can never approve).")] = None,
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token for a named person (--person) or a service (--service); its secret is
    printed once."""
    kind, owner = _owner_of(person, service)
    result = connect(home, server, token).post(
        "/api/tokens", json={"name": name, "role": role, "kind": kind, "owner": owner})
    emit(result, as_json, f"token {name} ({role}, {kind} {owner!r}): {result['token']}\n"
                          "store it now: it is not shown again")


def _owner_of(person: str | None, service: str | None) -> tuple[str, str]:
    """("person", name) or ("service", description); a usage error unless exactly one."""
    if (person is None) == (service is None):
        raise typer.BadParameter(
            'give exactly one of --person "Full Name" or --service "what it is": every token '
            "belongs to a named person or a service", param_hint="--person/--service")
    return ("person", person) if person is not None else ("service", service or "")


@tokens_app.command("list")
def list_tokens(home: HomeOption = None, server: ServerOption = None, token: TokenOption = None,
                as_json: JsonOption = False) -> None:
    """Tokens with their role, whom they belong to (person or service) and state; never
    their secrets."""
    rows = connect(home, server, token).get("/api/tokens")
    lines = [f"{t['name']:<24} {t['role']:<9} {t['kind']:<8} "
             f"{'revoked' if t['revoked_at'] else 'live':<8} {t['owner'] or '-'}"
             for t in rows]
    emit({"tokens": rows}, as_json, "\n".join(lines) if lines else "no tokens")


@tokens_app.command("revoke")
def revoke_token(name: Annotated[str, typer.Argument()], home: HomeOption = None,
                 server: ServerOption = None, token: TokenOption = None,
                 as_json: JsonOption = False) -> None:
    """Revoke a token at once."""
    result = connect(home, server, token).request("DELETE", f"/api/tokens/{name}")
    emit(result, as_json, f"token {name} revoked")
