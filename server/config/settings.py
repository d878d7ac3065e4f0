"""Server settings: `<home>/server.toml`, overridden by `EDGEOPS_SERVER_*` variables.

Only entry points call `load_settings`; library code takes a `ServerSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

from edgeops.errors import ConfigError
from edgeops.settings_file import env_prefix, load_settings_file

__all__ = [
    "ENV_PREFIX",
    "ENV_SCOPE",
    "SETTINGS_FILE",
    "ServerSettings",
    "load_settings",
    "save_settings",
]

SETTINGS_FILE = "server.toml"
ENV_SCOPE = "server"
ENV_PREFIX = env_prefix(ENV_SCOPE)  # EDGEOPS_SERVER_


@dataclass(frozen=True)
class ServerSettings:
    home: Path
    database_url: str = ""  # empty: SQLite file registry.db in home
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str = ""  # how agents reach this server; empty: http://http_host:http_port
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_username: str = ""
    broker_password: str = ""
    fleet: str = "default"
    topic_root: str = "edgeops"
    # Device identity and broker security (docs/fleet-identity.md).
    broker_tls: bool = False  # connect to the broker with TLS and a client cert from the CA
    broker_identity: str = "edgeops-server"  # CN prefix of the server's MQTT client certs
    device_auth: str = "certificate"  # "certificate", or "password" (simulations only)
    allow_password_auth: bool = False  # password mode is refused unless this is true
    # Fleet monitor (server/monitoring): time windows per cohort, retention of raw telemetry.
    monitor_enabled: bool = True
    monitor_window_s: float = 300.0  # seconds in simulations, minutes to hours in production
    monitor_interval_s: float = 5.0  # how often the monitor looks for closed windows
    monitor_grace_s: float = 5.0  # a window is scored this long after it closed
    monitor_retention_s: float = 7 * 86400.0  # telemetry rows rolled up and older are pruned
    monitor_false_alarm_rate: float = 0.001  # per cohort-window, with no drift
    monitor_min_count: int = 100  # fewer predictions in a window: inconclusive
    # Who this server process is among replicas, for the monitor's and pipeline's leases:
    # a restarted replica takes its own lease back at once, another waits for it to expire.
    # Empty: the host name (distinct replicas on one host need distinct ids).
    replica_id: str = ""
    # Continuous-delivery pipeline (server/pipeline): the release policy (TOML, relative to
    # home; missing file: no automatic runs) and how often the runner looks at its runs.
    pipeline_enabled: bool = True
    pipeline_policy_file: str = "pipeline.toml"
    pipeline_interval_s: float = 1.0
    # Where the Simulation Engine finds each device's own data: a folder of agent homes
    # named by device id (the laptop simulation's agents/). Empty: no trainer is set up.
    simulated_fleet_dir: str = ""
    # The hash-chained audit log (server/governance/audit_chain): how often its head is signed
    # when it moved, and how long entries are kept (floor 183 days: EU AI Act Art. 19, 26(6)).
    audit_anchor_interval_s: float = 300.0
    audit_retention_days: int = 200

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def tuf_dir(self) -> Path:
        return self.home / "tuf"

    @property
    def lease_holder(self) -> str:
        import socket

        return f"{self.replica_id or socket.gethostname()}:{self.home}"

    @property
    def pipeline_policy_path(self) -> Path:
        return self.home / self.pipeline_policy_file

    @property
    def pipeline_dir(self) -> Path:
        """Each pipeline run's working files (participants, package): pipeline/<run id>/."""
        return self.home / "pipeline"

    @property
    def admin_token_file(self) -> Path:
        return self.home / "admin.token"


def load_settings(home: Path, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Read `home/server.toml` and apply `EDGEOPS_SERVER_<NAME>` overrides."""
    home = Path(home).expanduser().resolve()
    hint = f"{home} is not a server home (no {SETTINGS_FILE}); run: edgeops server init --home {home}"
    settings = load_settings_file(
        ServerSettings, home / SETTINGS_FILE, scope=ENV_SCOPE, fixed={"home": home},
        environ=environ, missing=hint,
    )
    if settings.device_auth not in ("certificate", "password"):
        raise ConfigError(f"device_auth must be 'certificate' or 'password', not {settings.device_auth!r}")
    return settings


def save_settings(settings: ServerSettings) -> None:
    from edgeops.atomic_io import write_bytes_atomic

    values = {k: v for k, v in asdict(settings).items() if k != "home"}
    write_bytes_atomic(settings.home / SETTINGS_FILE, tomli_w.dumps(values).encode())
