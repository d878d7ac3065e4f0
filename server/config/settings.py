"""Server settings: `<home>/server.toml`, overridden by `EDGEOPS_SERVER_*` variables.

Only entry points call `load_settings`; library code takes a `ServerSettings`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from edgeops.errors import ConfigError

SETTINGS_FILE = "server.toml"
ENV_PREFIX = "EDGEOPS_SERVER_"


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
    def admin_token_file(self) -> Path:
        return self.home / "admin.token"


def _coerce(name: str, raw: Any, target_type: type) -> Any:
    try:
        if target_type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text in ("1", "true", "yes", "on")
        if target_type is int:
            return int(raw)
        return str(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"setting {name!r} must be {target_type.__name__}, got {raw!r}") from err


def load_settings(home: Path, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Read `home/server.toml` and apply `EDGEOPS_SERVER_<NAME>` overrides."""
    home = Path(home).expanduser().resolve()
    settings_path = home / SETTINGS_FILE
    if not settings_path.is_file():
        raise ConfigError(f"{home} is not a server home (no {SETTINGS_FILE}); run: edgeops server init --home {home}")
    try:
        values: dict[str, Any] = tomllib.loads(settings_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{settings_path} is not valid TOML: {err}") from err
    environ = os.environ if environ is None else environ
    known = {f.name: f.type for f in fields(ServerSettings) if f.name != "home"}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{settings_path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
    for name in known:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    typed = {name: _coerce(name, value, _TYPES.get(str(known[name]), str)) for name, value in values.items()}
    settings = replace(ServerSettings(home=home), **typed)
    if settings.device_auth not in ("certificate", "password"):
        raise ConfigError(f"device_auth must be 'certificate' or 'password', not {settings.device_auth!r}")
    return settings


_TYPES: dict[str, type] = {"int": int, "<class 'int'>": int, "bool": bool, "<class 'bool'>": bool}


def save_settings(settings: ServerSettings) -> None:
    from edgeops.atomic_io import write_bytes_atomic

    values = {k: v for k, v in asdict(settings).items() if k != "home"}
    write_bytes_atomic(settings.home / SETTINGS_FILE, tomli_w.dumps(values).encode())
