"""Content-addressed artifact store: every file lives at `sha256/<hex digest>`.

A file is hashed while it is copied into a temporary file in the store, fsynced and
renamed into place, so a reader sees a complete artifact or none. Putting the same
content twice is a no-op. `BlobStore` is the interface an S3-backed store will implement.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from edgeops.atomic_io import fsync_dir
from edgeops.errors import ConfigError, NotFoundError

__all__ = ["SHA256_PATTERN", "ArtifactStore", "BlobStore", "validate_sha256"]

logger = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
CHUNK_BYTES = 1024 * 1024


def validate_sha256(digest: str) -> str:
    """Return `digest` if it is 64 lowercase hex characters, else raise ConfigError."""
    if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
        raise ConfigError(f"not a sha256 hex digest (64 lowercase hex characters): {digest!r}")
    return digest


class BlobStore(Protocol):
    """What the registry needs from an artifact store (local folder today, S3 later)."""

    def put_file(self, path: Path) -> tuple[str, int]: ...

    def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...


class ArtifactStore:
    """A content-addressed folder: `<root>/sha256/<hash>`, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"

    def ensure(self) -> None:
        """Create the store's folders (idempotent)."""
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def put_file(self, path: Path) -> tuple[str, int]:
        """Copy `path` into the store; return its (sha256, size in bytes)."""
        self.ensure()
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".put.", suffix=".tmp", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            final = self._blobs / sha256
            if final.exists():
                logger.debug("artifact %s already stored", sha256)
            else:
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, final)
                fsync_dir(self._blobs)
                logger.info("stored artifact %s (%d bytes)", sha256, size)
        except FileNotFoundError as err:
            raise ConfigError(f"cannot store {path}: file not found") from err
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return sha256, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store `data`; return its (sha256, size in bytes)."""
        self.ensure()
        fd, tmp_name = tempfile.mkstemp(prefix=".bytes.", suffix=".tmp", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return self.put_file(Path(tmp_name))
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return (self._blobs / validate_sha256(sha256)).is_file()

    def path_for(self, sha256: str) -> Path:
        """The local path of a stored artifact; NotFoundError if it is not stored."""
        path = self._blobs / validate_sha256(sha256)
        if not path.is_file():
            raise NotFoundError(f"artifact sha256:{sha256} is not in the store")
        return path

    def open(self, sha256: str) -> BinaryIO:
        """Open a stored artifact for reading (binary)."""
        return open(self.path_for(sha256), "rb")
