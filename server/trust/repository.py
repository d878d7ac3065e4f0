"""The server's TUF repository on disk, built with python-tuf's Metadata API.

Layout under `<home>/tuf/`:

    keys/<role>[.<n>].pem       the online ed25519 private keys (PKCS#8 PEM, mode 0600): one
                                each for targets, snapshot and timestamp by default;
                                `server/trust/keys.py` adds, rotates and revokes them. The
                                three root keys (threshold 2: root.pem, root.2.pem,
                                root.3.pem) are written to an offline folder instead
    keys/revoked/               keys removed from the root, kept for the record
    metadata/1.root.json        every root version, N.root.json, and root.json (the latest)
    metadata/N.targets.json     consistent snapshots: versioned targets and snapshot files
    metadata/N.snapshot.json
    metadata/timestamp.json     the commit point: written last, after what it points to
    repository.json             expiry periods chosen at init

`timestamp.json` is the only file a client reads unversioned (besides the root it already
trusts), so a crash between writes leaves the previous release state visible: new
versioned files are unreferenced until the timestamp names their snapshot. Writes are
atomic (temp, fsync, rename) and serialized by a file lock, so two publishers cannot
interleave. With consistent snapshots clients fetch targets as `<dir>/<sha256>.<name>`.

TUF signs canonical JSON, which has no floating-point numbers, so floats in a target's
`custom` field are stored as their shortest round-trip strings (`0.1` -> `"0.1"`);
`ReleaseInfo.from_custom` (pydantic, lax mode) reads them back as the same floats.

Root keys are offline: `init_repository` writes them where `RootKeyCustody` says, one
file each (encrypted with a passphrase when given), outside `keys/`, so the online server
holds only the targets, snapshot and timestamp keys and cannot sign a new root; a new root
is signed where the root keys are (`edgeops server keys sign-root`, `server/trust/keys.py`).
`RootKeyCustody()` keeps them in `keys/` (development and tests only). Online signing uses
every key of a role found in `keys/`, and refuses if fewer than the role's threshold are
there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgeops.atomic_io import write_bytes_atomic, write_json_atomic
from edgeops.errors import ConfigError, NotFoundError, RegistryError

__all__ = [
    "OFFLINE_ROOT_STEPS",
    "ROLES",
    "RootKeyCustody",
    "TargetEntry",
    "TufExpiry",
    "TufRepository",
    "canonical_json_safe",
    "init_repository",
    "load_private_key",
    "validate_target_path",
    "write_private_key",
]

logger = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_ROOT_KEYS = 3
DEFAULT_ROOT_THRESHOLD = 2
HASH_ALGORITHM = "sha256"
CONFIG_FILE = "repository.json"
TARGET_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
OFFLINE_ROOT_STEPS = (
    "root keys belong offline: export the new root with --out FILE, sign it where the root "
    "keys are with 'edgeops server keys sign-root FILE --key KEY' (once per key, up to the "
    "threshold), then install it with 'edgeops server keys import-root FILE'"
)


@dataclass(frozen=True)
class RootKeyCustody:
    """Where `init_repository` writes the root private keys.

    `directory` None keeps them in `keys/` with the online keys, so this machine can sign a
    new root alone (development and tests only). Otherwise each root key is its own file in
    `directory` (root.pem, root.2.pem, ...), to be handed to its own holder; `passphrases`
    encrypts them: one for every key, or one per key.
    """

    directory: Path | None = None
    passphrases: tuple[bytes, ...] = ()

    def passphrase_for(self, index: int, root_keys: int) -> bytes | None:
        """The passphrase of the `index`-th (0-based) of `root_keys` keys, if any."""
        if len(self.passphrases) not in (0, 1, root_keys):
            raise ConfigError(
                f"give one root key passphrase, or one per root key ({root_keys}), "
                f"not {len(self.passphrases)}"
            )
        if any(not p for p in self.passphrases):
            raise ConfigError("a root key passphrase is empty")
        if not self.passphrases:
            return None
        return self.passphrases[index if len(self.passphrases) > 1 else 0]


@dataclass(frozen=True)
class TufExpiry:
    """How long each role's metadata stays valid after it is signed."""

    root_days: float = 365
    targets_days: float = 90
    snapshot_days: float = 7
    timestamp_days: float = 1

    def delta(self, role: str) -> timedelta:
        return timedelta(days=getattr(self, f"{role}_days"))


@dataclass(frozen=True)
class TargetEntry:
    """One signed target: its path, length, sha256 and custom field."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any]


def validate_target_path(target_path: str) -> str:
    """Return `target_path` if it is a relative path of safe segments, else ConfigError."""
    segments = target_path.split("/")
    if not target_path or any(
        not TARGET_SEGMENT.fullmatch(s) or s in {".", ".."} for s in segments
    ):
        raise ConfigError(
            f"invalid target path {target_path!r}: use '/'-separated segments of letters, "
            "digits, '_', '.' and '-' (no leading '/', no '..')"
        )
    return target_path


def canonical_json_safe(value: Any) -> Any:
    """`value` with every float replaced by its shortest round-trip string; ConfigError if
    anything else is not representable in canonical JSON."""

    def convert(item: Any) -> Any:
        if isinstance(item, float):
            return repr(item)
        if isinstance(item, dict):
            return {str(k): convert(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(v) for v in item]
        return item

    converted = convert(value)
    try:
        encode_canonical(converted)
    except Exception as err:  # securesystemslib raises its own FormatError
        raise ConfigError(
            f"target custom data is not representable in canonical JSON: {err}"
        ) from err
    return converted


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _serialize(metadata: Metadata) -> bytes:
    return metadata.to_bytes(JSONSerializer(compact=False))


def key_filename(role: str, index: int) -> str:
    """`root.pem`, `root.2.pem`, ...: the file of the `index`-th (1-based) key of `role`."""
    return f"{role}.pem" if index == 1 else f"{role}.{index}.pem"


def write_private_key(
    keys_dir: Path, role: str, signer: CryptoSigner, passphrase: bytes | None = None
) -> Path:
    """Save `signer`'s private key under the first free `<role>[.<n>].pem` (mode 0600),
    encrypted (PKCS#8, the best encryption cryptography offers) if `passphrase` is given."""
    index = 1
    while (keys_dir / key_filename(role, index)).exists():
        index += 1
    path = keys_dir / key_filename(role, index)
    data = signer.private_bytes
    if passphrase is not None:
        key = load_pem_private_key(data, password=None)
        data = key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase)
        )
    write_bytes_atomic(path, data, mode=0o600)
    return path


def load_private_key(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    """The signer of the PEM private key in `path`; ConfigError naming what is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the key {path}: {err}") from err
    try:
        return CryptoSigner(load_pem_private_key(data, password=passphrase))
    except TypeError as err:
        if passphrase is None:
            raise ConfigError(
                f"the key {path} is encrypted: give its passphrase (--passphrase-file FILE, "
                "'-' for stdin, or EDGEOPS_ROOT_KEY_PASSPHRASE)"
            ) from err
        raise ConfigError(f"the key {path} is not encrypted: give no passphrase") from err
    except ValueError as err:
        hint = "wrong passphrase, or " if passphrase is not None else ""
        raise ConfigError(f"cannot load the key {path}: {hint}not a PEM private key") from err


def init_repository(
    tuf_dir: Path,
    expiry: TufExpiry = TufExpiry(),
    now: datetime | None = None,
    *,
    root_keys: int = DEFAULT_ROOT_KEYS,
    root_threshold: int = DEFAULT_ROOT_THRESHOLD,
    root_custody: RootKeyCustody = RootKeyCustody(),
) -> None:
    """Create keys and the first signed root, targets, snapshot and timestamp in `tuf_dir`.

    Root gets `root_keys` keys with threshold `root_threshold` (2 of 3 by default), written
    where `root_custody` says; the other roles one key each, in `keys/`. Refuses
    (ConfigError) if `tuf_dir` already holds keys or metadata, if the root key folder is not
    empty or lies inside `tuf_dir`, or if the threshold is not in 1..root_keys.
    """
    if not 1 <= root_threshold <= root_keys:
        raise ConfigError(f"root threshold {root_threshold} must be in 1..{root_keys}")
    tuf_dir = Path(tuf_dir)
    keys_dir, metadata_dir = tuf_dir / "keys", tuf_dir / "metadata"
    if keys_dir.exists() or metadata_dir.exists():
        raise ConfigError(
            f"a TUF repository already exists in {tuf_dir}; refusing to overwrite its keys"
        )
    root_dir = _check_root_key_folder(tuf_dir, root_custody)
    passphrases = [root_custody.passphrase_for(i, root_keys) for i in range(root_keys)]
    now = now or _utcnow()
    keys_dir.mkdir(parents=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    metadata_dir.mkdir(parents=True)
    root_dir.mkdir(parents=True, mode=0o700, exist_ok=True)

    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    root_signers = [signers["root"]] + [
        CryptoSigner.generate_ed25519() for _ in range(root_keys - 1)
    ]
    for role, signer in signers.items():
        if role != "root":
            write_private_key(keys_dir, role, signer)
    for signer, passphrase in zip(root_signers, passphrases, strict=True):
        write_private_key(root_dir, "root", signer, passphrase)

    root = Root(expires=now + expiry.delta("root"), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    for signer in root_signers[1:]:
        root.add_key(signer.public_key, "root")
    root.roles["root"].threshold = root_threshold
    targets = Targets(expires=now + expiry.delta("targets"))
    snapshot = Snapshot(expires=now + expiry.delta("snapshot"))
    timestamp = Timestamp(expires=now + expiry.delta("timestamp"))

    write_json_atomic(tuf_dir / CONFIG_FILE, {"expiry_days": asdict(expiry)})
    root_md = Metadata(root)
    for signer in root_signers:
        root_md.sign(signer, append=True)
    root_bytes = _serialize(root_md)
    write_bytes_atomic(metadata_dir / "1.root.json", root_bytes)
    write_bytes_atomic(metadata_dir / "root.json", root_bytes)
    targets_md, snapshot_md = Metadata(targets), Metadata(snapshot)
    targets_md.sign(signers["targets"])
    snapshot_md.sign(signers["snapshot"])
    write_bytes_atomic(metadata_dir / "1.targets.json", _serialize(targets_md))
    write_bytes_atomic(metadata_dir / "1.snapshot.json", _serialize(snapshot_md))
    timestamp_md = Metadata(timestamp)
    timestamp_md.sign(signers["timestamp"])
    write_bytes_atomic(metadata_dir / "timestamp.json", _serialize(timestamp_md))
    logger.info("initialized TUF repository in %s", tuf_dir)


def _check_root_key_folder(tuf_dir: Path, custody: RootKeyCustody) -> Path:
    if custody.directory is None:
        return tuf_dir / "keys"
    root_dir = Path(custody.directory).resolve()
    if root_dir.is_relative_to(tuf_dir.resolve()):
        raise ConfigError(
            f"the root key folder {root_dir} is inside the TUF repository {tuf_dir}; "
            "choose a folder that leaves this machine"
        )
    if root_dir.exists() and (not root_dir.is_dir() or any(root_dir.iterdir())):
        raise ConfigError(f"the root key folder {root_dir} is not empty; refusing to mix keys")
    return root_dir


class TufRepository:
    """An initialized TUF repository: add targets, refresh expiring metadata, list targets."""

    def __init__(self, tuf_dir: Path) -> None:
        self.tuf_dir = Path(tuf_dir)
        self.metadata_dir = self.tuf_dir / "metadata"
        self.keys_dir = self.tuf_dir / "keys"
        if not (self.metadata_dir / "timestamp.json").is_file():
            raise ConfigError(
                f"{self.tuf_dir} is not a TUF repository (no metadata/timestamp.json)"
            )
        self.expiry = self._load_expiry()
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None

    # ---- locking ------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's write lock (re-entrant within this object).

        Publishing holds it across choosing a version, recording it and signing it.
        """
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = os.open(self.tuf_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # ---- reading ------------------------------------------------------------------------

    def _load_expiry(self) -> TufExpiry:
        path = self.tuf_dir / CONFIG_FILE
        if not path.is_file():
            return TufExpiry()
        try:
            return TufExpiry(**json.loads(path.read_text())["expiry_days"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is malformed: {err}") from err

    def _read(self, filename: str, signed_type: type[Signed]) -> Metadata:
        path = self.metadata_dir / filename
        try:
            metadata = Metadata.from_bytes(path.read_bytes())
        except (OSError, DeserializationError) as err:
            raise ConfigError(f"cannot read TUF metadata {path}: {err}") from err
        if not isinstance(metadata.signed, signed_type):
            raise ConfigError(
                f"{path} holds {metadata.signed.type} metadata, expected {signed_type.type}"
            )
        return metadata

    def _current(
        self,
    ) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        root = self._read("root.json", Root)
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise ConfigError(f"{self.metadata_dir}: snapshot lists no targets.json")
        targets = self._read(f"{targets_meta.version}.targets.json", Targets)
        return root, targets, snapshot, timestamp

    def targets_version(self) -> int:
        """The version of the targets metadata clients currently see."""
        return self._current()[1].signed.version

    def expiries(self) -> dict[str, tuple[datetime, timedelta]]:
        """Each role's current expiry and the validity period it is signed for."""
        return {md.signed.type: (md.signed.expires, self.expiry.delta(md.signed.type))
                for md in self._current()}

    def root_bytes(self) -> bytes:
        """The latest root metadata, e.g. to bootstrap a client's trust."""
        return (self.metadata_dir / "root.json").read_bytes()

    def targets(self) -> list[TargetEntry]:
        """Every target in the current signed targets metadata, sorted by path."""
        targets = self._current()[1].signed.targets
        return [
            TargetEntry(
                path=path,
                length=target.length,
                sha256=target.hashes[HASH_ALGORITHM],
                custom=dict(target.custom or {}),
            )
            for path, target in sorted(targets.items())
        ]

    # ---- signing and writing ------------------------------------------------------------

    def local_signers(self) -> dict[str, tuple[Path, CryptoSigner]]:
        """Every private key in `keys/` (not `keys/revoked/`), by keyid."""
        found: dict[str, tuple[Path, CryptoSigner]] = {}
        for path in sorted(self.keys_dir.glob("*.pem")):
            signer = load_private_key(path)
            found[signer.public_key.keyid] = (path, signer)
        return found

    def signers_for(self, root: Root, role: str, *, threshold: int | None = None) -> list[Signer]:
        """The local keys of `role` in `root`; ConfigError if fewer than its threshold."""
        needed = root.roles[role].threshold if threshold is None else threshold
        keyids = root.roles[role].keyids
        local = self.local_signers()
        signers: list[Signer] = [s for keyid, (_p, s) in local.items() if keyid in keyids]
        if len(signers) < needed:
            strays = [
                f"the key in {path} is not a {role} key of the current root"
                for keyid, (path, _s) in local.items()
                if path.name.split(".")[0] == role and keyid not in keyids
            ]
            raise ConfigError(
                f"only {len(signers)} of the {needed} {role} keys needed are in {self.keys_dir}"
                + (f" ({'; '.join(strays)})" if strays else "")
                + (f": {OFFLINE_ROOT_STEPS}" if role == "root" else "")
            )
        return signers

    def _sign_and_write(self, metadata: Metadata, root: Root, filename: str) -> None:
        metadata.signatures.clear()
        for signer in self.signers_for(root, metadata.signed.type):
            metadata.sign(signer, append=True)
        write_bytes_atomic(self.metadata_dir / filename, _serialize(metadata))

    def _bump(self, metadata: Metadata, now: datetime) -> None:
        metadata.signed.version += 1
        metadata.signed.expires = now + self.expiry.delta(metadata.signed.type)

    def _commit(
        self,
        root: Metadata[Root],
        targets: Metadata[Targets] | None,
        snapshot: Metadata[Snapshot] | None,
        timestamp: Metadata[Timestamp],
        now: datetime,
    ) -> None:
        """Bump and write the given roles in order: targets, snapshot, then timestamp."""
        if targets is not None:
            assert snapshot is not None, "a new targets version needs a new snapshot"
            self._bump(targets, now)
            self._sign_and_write(targets, root.signed, f"{targets.signed.version}.targets.json")
            snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        if snapshot is not None:
            self._bump(snapshot, now)
            self._sign_and_write(snapshot, root.signed, f"{snapshot.signed.version}.snapshot.json")
            timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._bump(timestamp, now)
        self._sign_and_write(timestamp, root.signed, "timestamp.json")

    def add_target(
        self,
        target_path: str,
        artifact_path: Path,
        custom: dict[str, Any],
        now: datetime | None = None,
        *,
        also: Sequence[tuple[str, Path, dict[str, Any]]] = (),
    ) -> int:
        """Sign `artifact_path` as `target_path` with `custom`, and each (target path,
        artifact path, custom) of `also` (a release's deltas), all in one new targets
        version, so that clients see all of them or none; return that version.

        RegistryError if a target path is already signed (targets are immutable).
        """
        signed: dict[str, TargetFile] = {}
        for path, artifact, extra in ((target_path, artifact_path, custom), *also):
            validate_target_path(path)
            if path in signed:
                raise RegistryError(f"TUF target {path!r} is given twice")
            try:
                signed[path] = TargetFile.from_file(path, str(artifact), [HASH_ALGORITHM])
            except OSError as err:
                raise ConfigError(f"cannot read artifact {artifact}: {err}") from err
            signed[path].unrecognized_fields["custom"] = canonical_json_safe(extra)
        with self.locked():
            root, targets, snapshot, timestamp = self._current()
            for path in signed:
                if path in targets.signed.targets:
                    raise RegistryError(
                        f"TUF target {path!r} already exists; targets are immutable"
                    )
            targets.signed.targets.update(signed)
            self._commit(root, targets, snapshot, timestamp, now or _utcnow())
            logger.info(
                "signed target %s in targets v%d", ", ".join(signed), targets.signed.version
            )
            return targets.signed.version

    def remove_targets(self, target_paths: Sequence[str], now: datetime | None = None) -> int:
        """Withdraw `target_paths` (a release, its deltas and compressed copy) from the
        signed targets in one new targets version (with new snapshot and timestamp
        versions); return that version.

        Clients that refresh no longer find them, so they cannot verify, hence install,
        them; the artifacts stay in the store for the record. NotFoundError, and nothing
        removed, if one of them is not signed.
        """
        with self.locked():
            root, targets, snapshot, timestamp = self._current()
            for path in target_paths:
                if path not in targets.signed.targets:
                    raise NotFoundError(
                        f"TUF target {path!r} is not in the signed targets "
                        f"(targets v{targets.signed.version})"
                    )
            for path in target_paths:
                del targets.signed.targets[path]
            self._commit(root, targets, snapshot, timestamp, now or _utcnow())
            logger.warning(
                "withdrew target %s in targets v%d", ", ".join(target_paths),
                targets.signed.version,
            )
            return targets.signed.version

    def refresh_timestamp(self, now: datetime | None = None) -> int:
        """Re-sign the timestamp with a new version and expiry; return its version."""
        with self.locked():
            root, _targets, _snapshot, timestamp = self._current()
            self._commit(root, None, None, timestamp, now or _utcnow())
            return timestamp.signed.version

    def refresh_expiring(self, now: datetime | None = None) -> list[str]:
        """Re-sign targets, snapshot and timestamp if less than half their period is left.

        Returns the roles re-signed. The server calls this periodically so clients never
        see expired metadata. Root is left alone (its key belongs offline).
        """
        now = now or _utcnow()
        with self.locked():
            root, targets, snapshot, timestamp = self._current()

            def expiring(md: Metadata) -> bool:
                return md.signed.expires - now < self.expiry.delta(md.signed.type) / 2

            renew_targets = expiring(targets)
            renew_snapshot = renew_targets or expiring(snapshot)
            renew_timestamp = renew_snapshot or expiring(timestamp)
            if not renew_timestamp:
                return []
            self._commit(
                root,
                targets if renew_targets else None,
                snapshot if renew_snapshot else None,
                timestamp,
                now,
            )
            renewed = [
                role
                for role, flag in (
                    ("targets", renew_targets),
                    ("snapshot", renew_snapshot),
                    ("timestamp", True),
                )
                if flag
            ]
            if root.signed.expires - now < self.expiry.delta("root") / 4:
                logger.warning(
                    "TUF root expires at %s: renew it with 'edgeops server keys renew-root "
                    "--out FILE' (%s)",
                    root.signed.expires,
                    OFFLINE_ROOT_STEPS,
                )
            logger.info("refreshed TUF metadata: %s", ", ".join(renewed))
            return renewed

    def verify(self) -> None:
        """Check that the current metadata chain is signed by the keys root delegates to."""
        root, targets, snapshot, timestamp = self._current()
        try:
            root.verify_delegate("root", root)
            for md in (targets, snapshot, timestamp):
                root.verify_delegate(md.signed.type, md)
        except RepositoryError as err:
            raise ConfigError(f"TUF repository {self.tuf_dir} does not verify: {err}") from err
