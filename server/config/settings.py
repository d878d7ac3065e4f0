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
    "check_transport",
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
    # Device certificate lifetime (< 825 days); agents renew once a third of it is left.
    device_cert_validity_days: int = 397
    device_auth: str = "certificate"  # "certificate", or "password" (simulations only)
    allow_password_auth: bool = False  # password mode is refused unless this is true
    # The fleet CA key is encrypted at rest with the passphrase in this file (relative to the
    # home; keep it outside, e.g. a systemd credential). Empty: the key is stored in clear.
    ca_key_passphrase_file: str = ""
    # Transport security (docs/security.md). `edgeops server init` writes http_tls = true and
    # broker_tls = true; plain HTTP or MQTT without TLS makes `edgeops server run` exit unless
    # the matching allow_insecure_* is true (laptop simulations, tests), which it then warns of.
    http_tls: bool = False  # serve HTTPS
    http_tls_cert_file: str = ""  # PEM chain; empty: one from the fleet CA for the server's names
    http_tls_key_file: str = ""
    allow_insecure_http: bool = False
    allow_insecure_mqtt: bool = False  # broker_tls = false: anonymous or password in clear text
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
    # Console and API hardening (docs/security.md). A console login lasts until it has been
    # idle for console_session_idle_s or is console_session_max_s old, whichever comes first;
    # its cookie is Secure under HTTPS, or always with console_secure_cookie (behind a proxy
    # that terminates TLS). /docs and /redoc load Swagger UI and ReDoc from a CDN: off unless
    # api_docs is true. metrics_token: /metrics needs a viewer token.
    console_session_idle_s: float = 1800.0
    console_session_max_s: float = 12 * 3600.0
    console_secure_cookie: bool = False
    api_docs: bool = False
    metrics_token: bool = False

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def resolved_public_url(self) -> str:
        scheme = "https" if self.http_tls else "http"
        return (self.public_url or f"{scheme}://{self.http_host}:{self.http_port}").rstrip("/")

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


def check_transport(settings: ServerSettings) -> list[str]:
    """Warnings for the insecure transports `settings` explicitly allow; ConfigError, naming
    the setting, for one that is not allowed. What `edgeops server run` checks at start."""
    warnings = []
    if not settings.http_tls:
        if not settings.allow_insecure_http:
            raise ConfigError(
                "http_tls = false: the server would serve its API, console and enrollment over "
                "plain HTTP (tokens in clear text). Set http_tls = true in server.toml, or "
                "allow_insecure_http = true for a laptop or test setup"
            )
        warnings.append("serving plain HTTP (allow_insecure_http = true): not for production")
    elif bool(settings.http_tls_cert_file) != bool(settings.http_tls_key_file):
        raise ConfigError("http_tls_cert_file and http_tls_key_file go together: set both or neither")
    if not settings.broker_tls:
        if not settings.allow_insecure_mqtt:
            raise ConfigError(
                "broker_tls = false: the server would talk MQTT without TLS, anonymously or with "
                "a password in clear text. Set broker_tls = true in server.toml (see edgeops "
                "server broker-config), or allow_insecure_mqtt = true for a laptop or test setup"
            )
        warnings.append("MQTT without TLS (allow_insecure_mqtt = true): not for production")
    return warnings


def save_settings(settings: ServerSettings) -> None:
    from edgeops.atomic_io import write_bytes_atomic

    values = {k: v for k, v in asdict(settings).items() if k != "home"}
    write_bytes_atomic(settings.home / SETTINGS_FILE, tomli_w.dumps(values).encode())
