"""Agent settings: one frozen dataclass, a TOML file in the agent's home, env overrides.

Library code takes an `AgentConfig`; only entry points call `load_config()`, which reads
`<home>/agent.toml` and applies `EDGEOPS_AGENT_<FIELD>` environment variables on top
(for example `EDGEOPS_AGENT_BROKER_PORT=1884`).

The home holds everything the agent owns:

    <home>/agent.toml           settings (mode 0600: it may hold the broker password)
    <home>/tuf/root.json        trusted TUF root; ngclient's metadata cache lives beside it
    <home>/trusted_root.json    the root the device was enrolled with (updater bootstrap)
    <home>/downloads/           verified artifacts before they are copied into a slot
    <home>/slots/{a,b}/         A/B model slots (see model_store)
    <home>/active.json          pointer to the active slot (the commit point of an update)
    <home>/identity/            device.key (0600), device.crt, ca.crt from enrollment
    <home>/outbox.db            telemetry waiting for the broker's PUBACK (SQLite, WAL)
    <home>/api_token            bearer token of the local API (0600, see agent/api_auth.py)
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.api_auth import TOKEN_FILE, ensure_token
from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError
from edgeops.settings_file import env_prefix, load_settings_file
from edgeops.topics import Topics, validate_device_id

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_CLI_HTTP_PORT",
    "ENV_PREFIX",
    "ENV_SCOPE",
    "IDENTITY_DIR",
    "TRUSTED_ROOT_FILE",
    "TUF_DIR",
    "AgentConfig",
    "DeviceIdentityFiles",
    "RepositorySource",
    "dump_toml",
    "init_agent_home",
    "load_config",
]

CONFIG_FILE = "agent.toml"
TUF_DIR = "tuf"
TRUSTED_ROOT_FILE = "trusted_root.json"
ENV_SCOPE = "agent"
ENV_PREFIX = env_prefix(ENV_SCOPE)  # EDGEOPS_AGENT_
DEFAULT_CLI_HTTP_PORT = 8765

IDENTITY_DIR = "identity"


@dataclass(frozen=True)
class DeviceIdentityFiles:
    cert_file: Path
    key_file: Path  # 0600, made on the device, never sent anywhere
    ca_file: Path


@dataclass(frozen=True)
class RepositorySource:
    """One place that serves the TUF repository: a mirror, or the server's own `/tuf/`.
    Untrusted either way: everything it serves is verified against the trusted root."""

    label: str  # "mirror https://cdn.example/edgeops/" or "server http://host:8000/tuf/"
    metadata_base_url: str  # ends with '/'
    targets_base_url: str  # ends with '/'


# Fields that describe where the config lives rather than what it says.
_NOT_IN_FILE = {"home"}


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs to run.

    `http_port`: None disables the local HTTP API (the library default, so a simulation
    of many agents opens no ports); 0 binds a free port (tests); any other value binds
    that port on `http_host`. `edgeops agent init` writes 8765 unless told otherwise.

    `mirrors`: base URLs of static copies of the TUF repository (`edgeops release mirror`),
    each serving `metadata/` and `targets/` under it. Updates try them in order and the
    server's own `/tuf/` last; a mirror serving stale, tampered or missing files is
    refused and the next one is used (see `repository_sources`).
    """

    home: Path
    device_id: str
    server_url: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_username: str | None = None
    broker_password: str | None = None
    fleet: str = "default"
    topic_root: str = "edgeops"
    telemetry_interval_s: float = 10.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    http_max_body_bytes: int = 1024 * 1024
    request_timeout_s: float = 30.0  # TUF downloads: connect and gap between bytes
    mqtt_keepalive_s: int = 30
    mqtt_session_expiry_s: int = 7 * 24 * 3600  # cmd messages queue this long while offline
    mqtt_reconnect_min_s: int = 1
    mqtt_reconnect_max_s: int = 30
    mqtt_max_queued_messages: int = 1000
    intra_op_threads: int = 1
    # Identity and store-and-forward (docs/fleet-identity.md). broker_tls: TLS to the
    # broker with the enrolled identity in <home>/identity/ (see `edgeops agent enroll`).
    broker_tls: bool = False
    outbox_max_messages: int = 10_000  # telemetry batches kept while the broker is away
    outbox_max_bytes: int = 64 * 1024 * 1024  # beyond either, the oldest are dropped, counted
    # Fleet monitor (issue 12): feedback labels and on-device privacy of telemetry windows.
    prediction_cache_size: int = 10_000  # recent predicted samples kept to join feedback to
    feedback_max_examples: int = 10_000  # labelled examples kept in <home>/feedback.db
    telemetry_min_count: int = 0  # a window of fewer predictions sends no sketches
    telemetry_epsilon: float | None = None  # Laplace noise per window; None: exact counts
    # OTA updates (see agent/ota/runner.py). The health window's duration and sample
    # count default to the release's health policy; these override it on this device.
    health_window_s: float | None = None
    health_min_samples: int | None = None
    mirrors: tuple[str, ...] = ()  # static TUF mirrors tried before the server (see above)
    update_max_attempts: int = 3  # interrupted pre-switch attempts before giving up
    update_max_boots: int = 3  # restarts while switching / in the health window: rollback
    download_retries: int = 4
    download_backoff_s: float = 0.5
    download_min_bytes_per_s: float = 1024.0
    max_artifact_bytes: int = 1024**3
    max_metadata_bytes: int = 5_000_000
    max_onnx_opset: int | None = None  # default: from the installed onnxruntime
    # Testing only: the agent SIGKILLs itself at this named point of an update
    # (EDGEOPS_AGENT_FAULT_POINT, read by the CLI entry point like every setting).
    fault_point: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        validate_device_id(self.device_id)
        url = urlparse(self.server_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"server url {self.server_url!r} must be http(s)://host[:port]")
        object.__setattr__(self, "mirrors", _check_mirrors(self.mirrors))
        _check_port("broker_port", self.broker_port, allow_zero=False)
        if self.http_port is not None:
            _check_port("http_port", self.http_port, allow_zero=True)
        positive = {
            "telemetry_interval_s": self.telemetry_interval_s,
            "request_timeout_s": self.request_timeout_s,
            "http_max_body_bytes": self.http_max_body_bytes,
            "outbox_max_messages": self.outbox_max_messages,
            "outbox_max_bytes": self.outbox_max_bytes,
            "prediction_cache_size": self.prediction_cache_size,
            "feedback_max_examples": self.feedback_max_examples,
            "mqtt_keepalive_s": self.mqtt_keepalive_s,
            "mqtt_reconnect_min_s": self.mqtt_reconnect_min_s,
            "intra_op_threads": self.intra_op_threads,
            "update_max_attempts": self.update_max_attempts,
            "update_max_boots": self.update_max_boots,
            "download_backoff_s": self.download_backoff_s,
            "max_artifact_bytes": self.max_artifact_bytes,
            "max_metadata_bytes": self.max_metadata_bytes,
        }
        non_negative = {
            "health_window_s": self.health_window_s,
            "health_min_samples": self.health_min_samples,
            "download_retries": self.download_retries,
            "telemetry_min_count": self.telemetry_min_count,
            "telemetry_epsilon": self.telemetry_epsilon,
            "download_min_bytes_per_s": self.download_min_bytes_per_s,
        }
        for name, value in non_negative.items():
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.mqtt_reconnect_max_s < self.mqtt_reconnect_min_s:
            raise ConfigError("mqtt_reconnect_max_s must be >= mqtt_reconnect_min_s")
        for name in ("fleet", "topic_root"):
            value = getattr(self, name)
            if not value or any(c in value for c in "/+#"):
                raise ConfigError(f"{name} {value!r} must be non-empty without '/', '+' or '#'")

    # Derived locations -------------------------------------------------------------

    @property
    def topics(self) -> Topics:
        return Topics.for_fleet(self.fleet, self.topic_root)

    @property
    def identity(self) -> DeviceIdentityFiles:
        """Where enrollment keeps the device's key, certificate and the fleet CA."""
        directory = self.home / IDENTITY_DIR
        return DeviceIdentityFiles(
            directory / "device.crt", directory / "device.key", directory / "ca.crt"
        )

    @property
    def outbox_path(self) -> Path:
        return self.home / "outbox.db"

    @property
    def tuf_dir(self) -> Path:
        return self.home / TUF_DIR

    @property
    def trusted_root_path(self) -> Path:
        return self.home / TRUSTED_ROOT_FILE

    @property
    def api_token_path(self) -> Path:
        """The local API's bearer token (made at init or the first start with the API on)."""
        return self.home / TOKEN_FILE

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def repository_sources(self) -> tuple[RepositorySource, ...]:
        """Where updates fetch TUF metadata and artifacts: each mirror in order, then the
        server's own `/tuf/`."""
        sources = [
            RepositorySource(f"mirror {base}", f"{base}metadata/", f"{base}targets/")
            for base in self.mirrors
        ]
        server = f"{self.server_url.rstrip('/')}/tuf/"
        sources.append(RepositorySource(f"server {server}", self.metadata_base_url,
                                        self.targets_base_url))
        return tuple(sources)

    @property
    def metadata_base_url(self) -> str:
        return f"{self.server_url.rstrip('/')}/tuf/metadata/"

    @property
    def targets_base_url(self) -> str:
        return f"{self.server_url.rstrip('/')}/tuf/targets/"

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values, with the password hidden (for logs and --json)."""
        values = _to_plain(self)
        if values.get("broker_password"):
            values["broker_password"] = "***"
        values["home"] = str(self.home)
        return values


def _check_port(name: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or not low <= value <= 65535:
        raise ConfigError(f"{name} must be an integer in {low}..65535, got {value!r}")


def _check_mirrors(mirrors: Any) -> tuple[str, ...]:
    """The mirror base URLs, each ending with '/'; ConfigError naming a bad one."""
    if isinstance(mirrors, str) or not isinstance(mirrors, tuple | list):
        raise ConfigError(f"mirrors must be a list of http(s) URLs, got {mirrors!r}")
    checked = []
    for mirror in mirrors:
        url = urlparse(mirror) if isinstance(mirror, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"mirror {mirror!r} must be an http(s):// base URL serving metadata/ and "
                "targets/, e.g. https://cdn.example.com/edgeops/"
            )
        if url.query or url.fragment:
            raise ConfigError(f"mirror {mirror!r} must not have a query or fragment")
        checked.append(mirror.rstrip("/") + "/")
    return tuple(checked)


def _to_plain(config: AgentConfig) -> dict[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in _NOT_IN_FILE and getattr(config, f.name) not in (None, ())
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to agent.toml")


def dump_toml(config: AgentConfig) -> str:
    """agent.toml text for `config` (flat keys; None and empty fields are left out)."""
    lines = ["# EdgeOps agent settings; EDGEOPS_AGENT_<KEY> environment variables override."]
    lines += [f"{key} = {_toml_value(value)}" for key, value in _to_plain(config).items()]
    return "\n".join(lines) + "\n"


def load_config(home: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read `<home>/agent.toml` and apply `EDGEOPS_AGENT_*` overrides. Entry points only."""
    home = Path(home)
    missing = f"no agent home at {home} ({CONFIG_FILE} missing); create one with 'edgeops agent init'"
    return load_settings_file(AgentConfig, home / CONFIG_FILE, scope=ENV_SCOPE, missing=missing,
                              fixed={"home": home}, environ=environ)


def _check_root(trusted_root: bytes) -> None:
    try:
        document = json.loads(trusted_root)
        kind = document["signed"]["_type"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"trusted root is not TUF root metadata: {err}") from err
    if kind != "root":
        raise ConfigError(f"trusted root file holds {kind!r} metadata, not 'root'")


def init_agent_home(
    home: Path, config: AgentConfig, trusted_root: bytes, *, force: bool = False
) -> AgentConfig:
    """Create an agent home: agent.toml and the trusted TUF root. Returns the config as saved.

    Refuses to touch an existing home unless `force`; with `force` the settings and trust
    root are replaced and the cached TUF metadata is dropped, while installed models and
    the local API token stay.
    """
    home = Path(home)
    config = dataclasses.replace(config, home=home)
    validate_device_id(config.device_id)
    _check_root(trusted_root)
    if (home / CONFIG_FILE).exists() and not force:
        raise ConfigError(f"{home} is already an agent home; pass --force to replace its settings")
    if force and config.tuf_dir.exists():
        shutil.rmtree(config.tuf_dir)
    home.mkdir(parents=True, exist_ok=True)
    # mkstemp-based atomic writes create files with mode 0600.
    write_bytes_atomic(home / CONFIG_FILE, dump_toml(config).encode())
    write_bytes_atomic(config.trusted_root_path, trusted_root)
    write_bytes_atomic(config.tuf_dir / "root.json", trusted_root)
    ensure_token(config.api_token_path)
    return config
