"""Writes that survive a power cut at any instant: temp file, fsync, rename, fsync dir."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeops.errors import ConfigError

__all__ = [
    "PRIVATE_FILE_MODE",
    "fsync_dir",
    "fsync_path",
    "read_json",
    "write_bytes_atomic",
    "write_json_atomic",
]

PRIVATE_FILE_MODE = 0o600  # owner read/write: what mkstemp creates, and the default here


def fsync_path(path: Path) -> None:
    """Flush `path` (a file, or a directory: a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fsync_path(directory)


def write_bytes_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix.

    The file has permission bits `mode` from the moment its temporary file exists (set
    before any byte is written, not after the rename), so a secret is never readable by
    others, not even briefly; the process umask does not apply.
    """
    path = Path(path)
    if not 0 <= mode <= 0o7777:
        raise ConfigError(f"file mode {mode:#o} for {path} is not a permission mode")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any, mode: int = PRIVATE_FILE_MODE) -> None:
    """`value` as indented, key-sorted JSON, written like `write_bytes_atomic`."""
    write_bytes_atomic(
        path, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", mode=mode
    )


def read_json(path: Path) -> Any:
    with open(path, "rb") as handle:
        return json.load(handle)
