"""How EdgeOps starts Flower's SuperLink so that devices reach only its Fleet API.

flwr 1.42's `flower-superlink` serves the Fleet, Control and Runtime APIs on one HTTP(S)
address. Control accepts anonymous clients (no account auth without Flower's OIDC plugin):
whoever reaches it can register SuperNodes, defeating `--enable-supernode-auth`, and start
runs whose ServerApp executes on the server host. So the SuperLink itself listens on
loopback only, and `server.federated.fleet_gateway` forwards `/v1/fleet/*` from the
devices' address to it. `plan_superlink` is the pure part: it checks the addresses and
folders and returns the command line and environment; `server.cli.superlink` runs them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import ConfigError

__all__ = [
    "SuperLinkPlan",
    "SuperLinkRequest",
    "TlsFiles",
    "is_loopback",
    "plan_superlink",
]

# Where Flower reads that Control API account authentication (OIDC) is on.
_OIDC_ENV = "FLWR_OIDC_ENABLED"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class SuperLinkRequest:
    """What the operator asked for. `control_host` is where the SuperLink (all its APIs)
    listens; `fleet_host`/`fleet_port` is where the gateway serves devices."""

    tls: TlsFiles
    state_dir: Path
    fleet_host: str
    fleet_port: int
    control_host: str = "127.0.0.1"
    control_port: int = 9093
    control_oidc: bool = False
    server_home: Path | None = None


@dataclass(frozen=True)
class SuperLinkPlan:
    command: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    upstream_url: str  # what the gateway forwards Fleet calls to


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IPs (127.0.0.0/8, ::1); names other than
    `localhost` are not resolved: they count as reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plan_superlink(
    request: SuperLinkRequest, base_env: Mapping[str, str], executable: str = "flower-superlink"
) -> SuperLinkPlan:
    """The `flower-superlink` command for `request`, or a ConfigError naming what is unsafe."""
    if not is_loopback(request.control_host) and not request.control_oidc:
        raise ConfigError(
            f"refusing to bind the SuperLink to {request.control_host}: flwr serves its "
            "Control and Runtime APIs on that address, and Control accepts anonymous "
            "clients (they could register SuperNodes and start runs on this host). Keep "
            "--control-host on loopback (reach it from elsewhere through an SSH tunnel) "
            "and let devices use the Fleet gateway (--fleet-host), or turn on Flower's "
            "OIDC account authentication with --control-oidc"
        )
    if request.fleet_port == request.control_port and request.fleet_host == request.control_host:
        raise ConfigError(
            f"the Fleet gateway and the SuperLink cannot both listen on "
            f"{request.fleet_host}:{request.fleet_port}: give --fleet-port another port"
        )
    for name, path in (
        ("CA", request.tls.ca_file),
        ("certificate", request.tls.cert_file),
        ("key", request.tls.key_file),
    ):
        if not path.is_file():
            raise ConfigError(f"TLS {name} file {path} does not exist")
    state_dir = request.state_dir.resolve()
    if request.server_home is not None and state_dir.is_relative_to(request.server_home.resolve()):
        raise ConfigError(
            f"the SuperLink state folder {state_dir} is inside the server home "
            f"{request.server_home}: ServerApps run with the state folder as their working "
            "directory and home, so keep it outside the folder that holds the CA and TUF keys"
        )
    env = {k: v for k, v in base_env.items() if not k.startswith("EDGEOPS_")}
    env["HOME"] = str(state_dir)
    env["FLWR_HOME"] = str(state_dir / "flwr-home")
    if request.control_oidc:
        env[_OIDC_ENV] = "1"
    else:
        env.pop(_OIDC_ENV, None)
    command = (
        executable,
        "--ssl-ca-certfile", str(request.tls.ca_file.resolve()),
        "--ssl-certfile", str(request.tls.cert_file.resolve()),
        "--ssl-keyfile", str(request.tls.key_file.resolve()),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str(state_dir / "superlink.db"),
        "--host", request.control_host,
        "--port", str(request.control_port),
    )  # fmt: skip
    host = request.control_host
    if host in ("localhost", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return SuperLinkPlan(
        command=command,
        env=env,
        cwd=state_dir,
        upstream_url=f"https://{host}:{request.control_port}",
    )
