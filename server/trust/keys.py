"""TUF key management: list, create, rotate and revoke keys; sign root offline.

Every change of keys is a new root version. TUF clients accept root N+1 only if it is
signed by a threshold of root N's root keys *and* a threshold of its own, so each
change here is signed with both: by the local keys when enough are in `keys/`, or on
other machines from an exported unsigned file. A server home made by `edgeops server init`
holds no root key, so every root change takes this path:

    edgeops server keys rotate --role timestamp --out root-v2.json          # proposes
    edgeops server keys sign-root root-v2.json --key /media/usb/root.pem \
        --passphrase-file -                                                 # elsewhere, xN
    edgeops server keys import-root root-v2.json                            # verifies, installs

Installing a root re-signs targets, snapshot and timestamp with new versions, so their
signatures match the keys the new root names. Keys the new root drops move to
`keys/revoked/`; metadata signed only by them is refused by every client that has the new
root.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError, TrustError
from server.trust.repository import (
    OFFLINE_ROOT_STEPS,
    ROLES,
    TufRepository,
    load_private_key,
    write_private_key,
)

__all__ = [
    "KeyInfo",
    "create_key",
    "import_root",
    "list_keys",
    "load_root_file",
    "online_root_keys",
    "renew_root",
    "revoke_key",
    "rotate_key",
    "sign_root_file",
]

logger = logging.getLogger(__name__)

RootChange = Callable[[Root], None]


@dataclass(frozen=True)
class KeyInfo:
    keyid: str
    roles: tuple[str, ...]
    online: bool  # its private key is in keys/
    path: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "keyid": self.keyid,
            "roles": list(self.roles),
            "online": self.online,
            "path": self.path,
        }


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _root_md(repo: TufRepository) -> Metadata[Root]:
    metadata = Metadata.from_bytes(repo.root_bytes())
    assert isinstance(metadata.signed, Root)
    return metadata


def list_keys(repo: TufRepository) -> dict[str, Any]:
    """Roles with their thresholds and keys, and which private keys are on this machine."""
    root = _root_md(repo).signed
    local = repo.local_signers()
    keys: dict[str, list[str]] = {}
    for role in ROLES:
        for keyid in root.roles[role].keyids:
            keys.setdefault(keyid, []).append(role)
    return {
        "root_version": root.version,
        "root_expires": root.expires.isoformat(),
        "roles": {
            role: {"threshold": root.roles[role].threshold, "keyids": list(root.roles[role].keyids)}
            for role in ROLES
        },
        "keys": [
            KeyInfo(
                keyid,
                tuple(roles),
                keyid in local,
                str(local[keyid][0]) if keyid in local else None,
            ).to_json()
            for keyid, roles in keys.items()
        ],
    }


def online_root_keys(repo: TufRepository) -> list[Path]:
    """The files in keys/ holding a key of the current root role (none, when kept offline)."""
    root_keyids = set(_root_md(repo).signed.roles["root"].keyids)
    return [path for keyid, (path, _s) in repo.local_signers().items() if keyid in root_keyids]


def propose_root(
    repo: TufRepository, change: RootChange, now: datetime | None = None
) -> Metadata[Root]:
    """The next root version with `change` applied, unsigned."""
    current = _root_md(repo)
    proposed = Metadata.from_bytes(repo.root_bytes())
    proposed.signatures.clear()
    root = proposed.signed
    assert isinstance(root, Root)
    change(root)
    root.version = current.signed.version + 1
    root.expires = (now or _now()) + repo.expiry.delta("root")
    for role in ROLES:
        if len(root.roles[role].keyids) < root.roles[role].threshold:
            raise ConfigError(
                f"{role} would have {len(root.roles[role].keyids)} keys, "
                f"fewer than its threshold {root.roles[role].threshold}"
            )
    return proposed


def sign_with_local_keys(repo: TufRepository, proposed: Metadata[Root]) -> int:
    """Sign `proposed` with every local key that the old or the new root lists for root."""
    old_root = _root_md(repo).signed
    wanted = set(old_root.roles["root"].keyids) | set(proposed.signed.roles["root"].keyids)
    signed = 0
    for keyid, (_path, signer) in repo.local_signers().items():
        if keyid in wanted and keyid not in proposed.signatures:
            proposed.sign(signer, append=True)
            signed += 1
    return signed


def verify_root(old_root: Root, proposed: Metadata[Root]) -> None:
    """TrustError unless `proposed` is the next version, signed by both thresholds."""
    if proposed.signed.version != old_root.version + 1:
        raise TrustError(
            f"root v{proposed.signed.version} does not follow the current v{old_root.version}"
        )
    try:
        old_root.verify_delegate("root", proposed.signed_bytes, proposed.signatures)
    except RepositoryError as err:
        raise TrustError(
            f"root v{proposed.signed.version} lacks the old root threshold: {err}"
        ) from err
    try:
        proposed.signed.verify_delegate("root", proposed.signed_bytes, proposed.signatures)
    except RepositoryError as err:
        raise TrustError(f"root v{proposed.signed.version} lacks its own threshold: {err}") from err


def import_root(repo: TufRepository, proposed: Metadata[Root], now: datetime | None = None) -> int:
    """Verify and install `proposed` as the new root; re-sign the other roles. Its version."""
    now = now or _now()
    with repo.locked():
        old_root = _root_md(repo).signed
        verify_root(old_root, proposed)
        data = proposed.to_bytes(JSONSerializer(compact=False))
        version = proposed.signed.version
        write_bytes_atomic(repo.metadata_dir / f"{version}.root.json", data)
        write_bytes_atomic(repo.metadata_dir / "root.json", data)
        _root, targets, snapshot, timestamp = repo._current()  # noqa: SLF001 (same package)
        repo._commit(proposed, targets, snapshot, timestamp, now)  # noqa: SLF001
        for keyid in set(old_root.keys) - set(proposed.signed.keys):
            _retire(repo, keyid)
    logger.info("installed TUF root v%d", version)
    return version


def _apply(
    repo: TufRepository,
    change: RootChange,
    *,
    offline_out: Path | None,
    now: datetime | None,
) -> dict[str, Any]:
    proposed = propose_root(repo, change, now)
    if offline_out is not None:
        sign_with_local_keys(repo, proposed)
        write_bytes_atomic(offline_out, proposed.to_bytes(JSONSerializer(compact=False)))
        return {
            "root_version": proposed.signed.version,
            "exported": str(offline_out),
            "installed": False,
        }
    sign_with_local_keys(repo, proposed)
    try:
        version = import_root(repo, proposed, now)
    except TrustError as err:
        raise ConfigError(
            f"this machine cannot sign root v{proposed.signed.version} "
            f"({err}); {OFFLINE_ROOT_STEPS}"
        ) from err
    return {"root_version": version, "installed": True}


def _new_key_folder(repo: TufRepository, role: str, key_dir: Path | None) -> Path:
    """Where a new key of `role` goes: keys/, unless it is a root key of an offline root."""
    if key_dir is not None:
        return Path(key_dir)
    if role == "root":
        root_keyids = set(_root_md(repo).signed.roles["root"].keyids)
        if not root_keyids & set(repo.local_signers()):
            raise ConfigError(
                "the root keys of this repository are offline, so a new root key must not "
                "be written to the server: give --key-dir DIR (and --passphrase-file)"
            )
    return repo.keys_dir


def create_key(
    repo: TufRepository,
    role: str,
    *,
    offline_out: Path | None = None,
    key_dir: Path | None = None,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Generate a key, save it in `key_dir` (default keys/; encrypted with `passphrase`),
    and add it to `role` in a new root."""
    _check_role(role)
    signer = CryptoSigner.generate_ed25519()
    path = write_private_key(_new_key_folder(repo, role, key_dir), role, signer, passphrase)
    try:
        result = _apply(
            repo, lambda r: r.add_key(signer.public_key, role), offline_out=offline_out, now=now
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {**result, "keyid": signer.public_key.keyid, "path": str(path)}


def rotate_key(
    repo: TufRepository,
    role: str,
    keyid: str | None = None,
    *,
    offline_out: Path | None = None,
    key_dir: Path | None = None,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Replace `keyid` (default: every current key of `role`, which must then be one) with a
    new key (saved as `create_key` does), in a new root signed by the old and the new
    thresholds."""
    _check_role(role)
    current = _root_md(repo).signed.roles[role].keyids
    if keyid is None:
        if len(current) != 1:
            raise ConfigError(
                f"{role} has {len(current)} keys: name the one to rotate with --keyid"
            )
        keyid = current[0]
    keyid = _resolve(repo, keyid, role)
    signer = CryptoSigner.generate_ed25519()
    path = write_private_key(_new_key_folder(repo, role, key_dir), role, signer, passphrase)

    def change(root: Root) -> None:
        root.add_key(signer.public_key, role)
        root.revoke_key(keyid, role)

    try:
        result = _apply(repo, change, offline_out=offline_out, now=now)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {**result, "keyid": signer.public_key.keyid, "replaced": keyid, "path": str(path)}


def revoke_key(
    repo: TufRepository,
    keyid: str,
    *,
    offline_out: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Remove `keyid` from every role in a new root; its file moves to keys/revoked/."""
    keyid = _resolve(repo, keyid, None)
    roles = [r for r in ROLES if keyid in _root_md(repo).signed.roles[r].keyids]

    def change(root: Root) -> None:
        for role in roles:
            root.revoke_key(keyid, role)

    result = _apply(repo, change, offline_out=offline_out, now=now)
    return {**result, "revoked": keyid, "roles": roles}


def renew_root(
    repo: TufRepository, *, offline_out: Path | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The same root with the next version and a fresh expiry (before the old one runs out)."""
    return _apply(repo, lambda _root: None, offline_out=offline_out, now=now)


def load_root_file(path: Path) -> Metadata[Root]:
    try:
        metadata = Metadata.from_bytes(Path(path).read_bytes())
    except (OSError, DeserializationError) as err:
        raise ConfigError(f"cannot read root metadata {path}: {err}") from err
    if not isinstance(metadata.signed, Root):
        raise ConfigError(f"{path} holds {metadata.signed.type} metadata, not root")
    return metadata


def sign_root_file(path: Path, key_file: Path, passphrase: bytes | None = None) -> str:
    """Add the signature of the private key in `key_file` (decrypted with `passphrase`) to
    the root in `path` (offline)."""
    metadata = load_root_file(path)
    signer = load_private_key(key_file, passphrase)
    metadata.sign(signer, append=True)
    write_bytes_atomic(Path(path), metadata.to_bytes(JSONSerializer(compact=False)))
    return signer.public_key.keyid


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


def _resolve(repo: TufRepository, prefix: str, role: str | None) -> str:
    root = _root_md(repo).signed
    candidates = [k for k in root.keys if k.startswith(prefix)]
    if role is not None:
        candidates = [k for k in candidates if k in root.roles[role].keyids]
    if len(candidates) != 1:
        where = f"{role} " if role else ""
        raise ConfigError(f"{len(candidates)} {where}keys match {prefix!r}; give more of the keyid")
    return candidates[0]


def _retire(repo: TufRepository, keyid: str) -> None:
    local = repo.local_signers()
    if keyid not in local:
        return
    path = local[keyid][0]
    revoked = repo.keys_dir / "revoked"
    revoked.mkdir(mode=0o700, exist_ok=True)
    os.replace(path, revoked / f"{keyid[:16]}.{path.name}")
