"""The server home: one folder holding everything a server instance owns.

<home>/server.toml      settings (server.config.settings)
<home>/registry.db      SQLite registry (unless database_url points elsewhere)
<home>/artifacts/       content-addressed artifact store
<home>/tuf/             TUF repository: the online keys/ (0600) and metadata/
<home>/admin.token      bearer token for mutating API calls (0600)

The TUF root keys never enter the home: `init_home` writes them to a folder outside it
(`<home>.root-keys/` by default), one file per key, for the operator to hand to their holders.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError, EdgeOpsError
from server.config.settings import SETTINGS_FILE, ServerSettings, save_settings
from server.db.engine import migrate_database
from server.registry.artifact_store import ArtifactStore
from server.trust.repository import RootKeyCustody, TufExpiry, init_repository

__all__ = ["HomeInfo", "default_root_key_folder", "init_home", "read_admin_token"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HomeInfo:
    home: Path
    settings_file: Path
    database_url: str
    artifacts_dir: Path
    tuf_dir: Path
    admin_token_file: Path
    root_keys_dir: Path  # where the root private keys were written


def default_root_key_folder(home: Path) -> Path:
    """`<home>.root-keys`, next to the home and outside it."""
    home = Path(home).resolve()
    return home.with_name(f"{home.name}.root-keys")


def init_home(
    settings: ServerSettings,
    expiry: TufExpiry | None = None,
    *,
    root_custody: RootKeyCustody | None = None,
) -> HomeInfo:
    """Create a new server home; refuse (ConfigError) if `settings.home` already holds one.

    The root keys go where `root_custody` says (default: unencrypted in
    `default_root_key_folder(home)`), which must lie outside the home unless it keeps them
    online (`RootKeyCustody()`, development only). An empty existing folder is accepted. If
    any step fails, everything created is removed.
    """
    home = Path(settings.home)
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        hint = " (it is a server home already)" if (home / SETTINGS_FILE).exists() else ""
        raise ConfigError(f"{home} already exists and is not empty{hint}; choose a new --home")
    custody = root_custody or RootKeyCustody(directory=default_root_key_folder(home))
    if custody.directory is not None and Path(custody.directory).resolve().is_relative_to(
        home.resolve()
    ):
        raise ConfigError(
            f"the root key folder {custody.directory} is inside the server home {home}; "
            "the server must not hold its root keys: choose a folder outside it"
        )
    root_keys_dir = Path(custody.directory or settings.tuf_dir / "keys").resolve()
    created = not home.exists()
    created_root_dir = not root_keys_dir.exists()
    home.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(home, 0o700)
        save_settings(settings)
        migrate_database(settings.resolved_database_url)
        ArtifactStore(settings.artifacts_dir).ensure()
        init_repository(settings.tuf_dir, expiry or TufExpiry(), root_custody=custody)
        token_file = settings.admin_token_file
        write_bytes_atomic(token_file, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600)
    except (EdgeOpsError, OSError) as err:
        _remove_partial_home(home, created)
        if created_root_dir:
            shutil.rmtree(root_keys_dir, ignore_errors=True)
        if isinstance(err, EdgeOpsError):
            raise
        raise ConfigError(f"cannot create server home {home}: {err}") from err
    logger.info("initialized server home %s", home)
    return HomeInfo(
        home=home,
        settings_file=home / SETTINGS_FILE,
        database_url=settings.resolved_database_url,
        artifacts_dir=settings.artifacts_dir,
        tuf_dir=settings.tuf_dir,
        admin_token_file=settings.admin_token_file,
        root_keys_dir=root_keys_dir,
    )


def _remove_partial_home(home: Path, created: bool) -> None:
    if created:
        shutil.rmtree(home, ignore_errors=True)
    else:
        for child in home.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(
                missing_ok=True
            )


def read_admin_token(settings: ServerSettings) -> str:
    """The admin bearer token from `<home>/admin.token`; ConfigError if missing or empty."""
    try:
        token = settings.admin_token_file.read_text().strip()
    except OSError as err:
        raise ConfigError(
            f"cannot read the admin token {settings.admin_token_file}: {err}"
        ) from err
    if not token:
        raise ConfigError(f"the admin token file {settings.admin_token_file} is empty")
    return token
