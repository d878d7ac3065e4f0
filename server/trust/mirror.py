"""Write the TUF repository as a static mirror that any HTTP server, object store or CDN
can serve (`edgeops release mirror --to DIR`):

    DIR/metadata/N.root.json      every root version, and root.json (the latest)
    DIR/metadata/N.targets.json   the current targets and snapshot versions
    DIR/metadata/N.snapshot.json
    DIR/metadata/timestamp.json   written last: the mirror's commit point
    DIR/targets/<dir>/<sha256>.<name>   each signed target (consistent snapshots)

A mirror is untrusted: agents verify everything it serves against the keys they trust, so
a stale, tampered or half-synced mirror is refused, never believed. To keep a mirror that
is being synced usable, files go in the order a client reads them backwards: artifacts,
then versioned metadata, then `root.json`, then `timestamp.json`, each written to a
temporary file and renamed. Until the new timestamp lands, clients see the previous state,
whose versioned files are still there (nothing is deleted). Rerunning into the same folder
copies only what is missing: artifacts already present with the signed length, metadata
with the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from edgeops.atomic_io import fsync_dir, write_bytes_atomic
from edgeops.errors import ConfigError, TrustError
from server.registry.artifact_store import ArtifactStore
from server.trust.repository import TufRepository

__all__ = ["MIRROR_FILE_MODE", "MirrorReport", "write_mirror"]

MIRROR_FILE_MODE = 0o644  # a mirror is public by design: any web server user may read it
_CHUNK_BYTES = 1024 * 1024
_VERSIONED_ROOT = re.compile(r"^(\d+)\.root\.json$")


@dataclass(frozen=True)
class MirrorReport:
    """What one sync wrote: the files copied and the artifacts already in place."""

    directory: Path
    timestamp_version: int
    targets_version: int
    copied_targets: list[str] = field(default_factory=list)
    present_targets: list[str] = field(default_factory=list)
    copied_metadata: list[str] = field(default_factory=list)
    copied_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "directory": str(self.directory)}


@dataclass(frozen=True)
class _State:
    """The repository's current metadata, read under its lock: (file name, bytes) pairs."""

    versioned: list[tuple[str, bytes]]
    root: bytes
    timestamp: bytes
    timestamp_version: int
    targets: Metadata[Targets]


def _parse(name: str, data: bytes) -> Metadata[Any]:
    try:
        return Metadata.from_bytes(data)
    except DeserializationError as err:
        raise ConfigError(f"TUF metadata {name} is malformed: {err}") from err


def _read_state(repository: TufRepository) -> _State:
    metadata_dir = repository.metadata_dir
    with repository.locked():  # a publish in progress finishes first
        try:
            timestamp_bytes = (metadata_dir / "timestamp.json").read_bytes()
            timestamp: Metadata[Timestamp] = _parse("timestamp.json", timestamp_bytes)
            snapshot_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
            snapshot_bytes = (metadata_dir / snapshot_name).read_bytes()
            snapshot: Metadata[Snapshot] = _parse(snapshot_name, snapshot_bytes)
            targets_meta = snapshot.signed.meta.get("targets.json")
            if targets_meta is None:
                raise ConfigError(f"{metadata_dir / snapshot_name} lists no targets.json")
            targets_name = f"{targets_meta.version}.targets.json"
            targets_bytes = (metadata_dir / targets_name).read_bytes()
            roots = sorted(
                (int(match[1]), path.name)
                for path in metadata_dir.iterdir()
                if (match := _VERSIONED_ROOT.fullmatch(path.name))
            )
            versioned = [(name, (metadata_dir / name).read_bytes()) for _v, name in roots]
            root_bytes = (metadata_dir / "root.json").read_bytes()
        except FileNotFoundError as err:
            raise ConfigError(f"the TUF repository {repository.tuf_dir} is incomplete: {err}") from err
    versioned += [(targets_name, targets_bytes), (snapshot_name, snapshot_bytes)]
    return _State(
        versioned=versioned,
        root=root_bytes,
        timestamp=timestamp_bytes,
        timestamp_version=timestamp.signed.version,
        targets=_parse(targets_name, targets_bytes),
    )


def _copy_verified(source: Path, destination: Path, length: int, sha256: str) -> None:
    """Copy `source` to `destination` (temp, fsync, rename) if its bytes are the signed ones."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name[:64]}.", suffix=".tmp", dir=destination.parent
    )
    try:
        os.fchmod(fd, MIRROR_FILE_MODE)
        with os.fdopen(fd, "w+b") as out:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
            out.seek(0)
            digest = hashlib.file_digest(out, "sha256").hexdigest()  # the copy, as served
        if size != length or digest != sha256:
            raise TrustError(
                f"the artifact store's {source} is not the signed artifact "
                f"({size} bytes, sha256 {digest[:12]}…; signed: {length} bytes, "
                f"sha256 {sha256[:12]}…): not copied to the mirror"
            )
        os.replace(tmp_name, destination)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    fsync_dir(destination.parent)


def _write_metadata(path: Path, data: bytes, copied: list[str]) -> None:
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_bytes_atomic(path, data, mode=MIRROR_FILE_MODE)
    copied.append(path.name)


def _writable_folder(directory: Path) -> Path:
    directory = Path(directory).expanduser().resolve()
    try:
        for sub in ("metadata", "targets"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the mirror folder {directory}: {err.strerror or err}") from err
    if not os.access(directory / "metadata", os.W_OK) or not os.access(directory / "targets", os.W_OK):
        raise ConfigError(f"the mirror folder {directory} is not writable")
    return directory


def write_mirror(tuf_dir: Path, store: ArtifactStore, directory: Path) -> MirrorReport:
    """Write (or bring up to date) the static mirror of the repository in `tuf_dir` at
    `directory`. ConfigError for a missing repository or an unwritable folder, NotFoundError
    for a signed artifact the store lacks, TrustError for one whose bytes are not signed."""
    repository = TufRepository(tuf_dir)
    directory = _writable_folder(directory)
    state = _read_state(repository)
    copied_targets: list[str] = []
    present: list[str] = []
    copied_bytes = 0
    try:
        for target_path, info in sorted(state.targets.signed.targets.items()):
            sha256 = info.hashes.get("sha256")
            if sha256 is None:
                raise TrustError(f"target {target_path} is not signed with a sha256 hash")
            folder, sep, name = target_path.rpartition("/")
            relative = f"{folder}{sep}{sha256}.{name}"
            destination = directory / "targets" / relative
            if destination.is_file() and destination.stat().st_size == info.length:
                present.append(relative)
                continue
            _copy_verified(store.path_for(sha256), destination, info.length, sha256)
            copied_targets.append(relative)
            copied_bytes += info.length
        copied_metadata: list[str] = []
        metadata_dir = directory / "metadata"
        for name, data in state.versioned:
            _write_metadata(metadata_dir / name, data, copied_metadata)
        _write_metadata(metadata_dir / "root.json", state.root, copied_metadata)
        _write_metadata(metadata_dir / "timestamp.json", state.timestamp, copied_metadata)
    except PermissionError as err:
        raise ConfigError(f"cannot write to the mirror folder {directory}: {err}") from err
    return MirrorReport(
        directory=directory,
        timestamp_version=state.timestamp_version,
        targets_version=state.targets.signed.version,
        copied_targets=copied_targets,
        present_targets=present,
        copied_metadata=copied_metadata,
        copied_bytes=copied_bytes,
    )
