"""Fetch a release as fewer bytes: a delta from the model this device runs, or the
artifact zstd-compressed, with the full artifact as the fallback the caller keeps.

Both are signed TUF targets beside the release (`edgeops.ota_delta` names them):

    <dir>/deltas/<active sha256>.<name>.delta   custom {"delta": {"from_sha256", "to",
                                                                  "to_sha256", "to_length"}}
    <dir>/<name>.zst                            custom {"compressed": {"of", "sha256", "length"}}

The order of checks, each before the next step: the signed custom must point at exactly
this release target, its sha256 and length, and (a delta) at the sha256 of the active
model as re-hashed here; the fetcher verifies the delta's or copy's own signed length and
hash as the bytes arrive; the apply (or decompression) is capped at the signed full
length; and the result is hashed and compared with the release's signed length and sha256
before it is renamed into the slot's incoming file. A delta is never trusted on its own.
Any failure is logged and answered with None: the caller fetches the full artifact.

Writes follow the agent's rule: a temporary file, fsync, rename, fsync of the folder; a
SIGKILL at any of the fault points (`FAULT_POINTS`) leaves the incoming file absent or
complete. zstandard is imported only here, when an update runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeops import ota_delta
from edgeops.atomic_io import fsync_dir
from edgeops.errors import UpdateError

if TYPE_CHECKING:  # pragma: no cover
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater

__all__ = [
    "FAULT_POINTS",
    "FetchTarget",
    "Transfer",
    "fetch_compressed",
    "fetch_delta",
    "no_fault",
    "write_verified",
]

logger = logging.getLogger(__name__)

FAULT_POINTS = (
    "delta:downloaded",  # the verified delta is on disk, nothing applied yet
    "delta:mid_apply",  # part of the new model is in the temporary file
    "delta:written",  # the new model is complete and fsynced, not yet renamed
    "compressed:downloaded",
    "compressed:written",
)

FetchTarget = Callable[["TargetFile", Path], Path]
"""Download a signed target to a path, verified against its signed length and hashes."""

Fault = Callable[[str], None]


@dataclass(frozen=True)
class Transfer:
    """How a release's bytes arrived: `received_bytes` of the signed target `target`."""

    kind: Literal["delta", "compressed", "full", "cached"]
    target: str
    received_bytes: int


class _Unusable(UpdateError):
    """A delta or compressed copy this agent will not use (the reason is logged)."""


def no_fault(_name: str) -> None:
    """A fault hook that does nothing."""


def write_verified(
    destination: Path,
    produce: Callable[[Callable[[bytes], Any]], object],
    *,
    length: int,
    sha256: str,
    fault: Fault = no_fault,
    point: str = "delta",
) -> None:
    """Write what `produce` passes to its writer into `destination`, through a temporary
    file, only if it is exactly `length` bytes with this `sha256` (else UpdateError and no
    `destination`). `fault` is called at `<point>:mid_apply` and `<point>:written`."""
    temporary = destination.with_name(f".{destination.name}.{point}.tmp")
    digest, written = hashlib.sha256(), 0
    try:
        with open(temporary, "wb") as out:

            def write(chunk: bytes) -> None:
                nonlocal written
                written += len(chunk)
                if written > length:
                    raise _Unusable(f"result runs past the signed length {length}")
                digest.update(chunk)
                out.write(chunk)
                if point == "delta" and written == len(chunk) and written < length:
                    out.flush()
                    fault(f"{point}:mid_apply")

            produce(write)
            out.flush()
            os.fsync(out.fileno())
        if written != length or digest.hexdigest() != sha256:
            raise _Unusable(
                f"result of {written} bytes does not match the signed length {length} "
                "and sha256 of the release"
            )
        fault(f"{point}:written")
        os.replace(temporary, destination)
        fsync_dir(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _file_sha256(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _signed(updater: Updater, path: str) -> TargetFile | None:
    try:
        return updater.get_targetinfo(path)
    except Exception as err:  # ngclient: delegated metadata that cannot be fetched
        raise _Unusable(f"cannot look up {path}: {err}") from err


def _expect(custom: Any, key: str, expected: dict[str, object], path: str) -> None:
    described = custom.get(key) if isinstance(custom, dict) else None
    if not isinstance(described, dict):
        raise _Unusable(f"{path} is signed without a {key!r} description")
    for name, value in expected.items():
        if described.get(name) != value:
            raise _Unusable(
                f"{path} names {name} {described.get(name)!r}, expected {value!r}"
            )


def _fetch_and_write(
    kind: Literal["delta", "compressed"],
    release: TargetFile,
    info: TargetFile,
    places: tuple[Path, Path],
    fetch: FetchTarget,
    fault: Fault,
    produce: Callable[[Path, Callable[[bytes], Any]], object],
) -> Transfer:
    """Download the signed target `info` into the work folder, then write what `produce`
    makes of it into the destination, checked against `release` (`places`: destination,
    work folder)."""
    destination, work_dir = places
    if info.length >= release.length:
        raise _Unusable(f"{info.path} is not smaller than the artifact")
    work_dir.mkdir(parents=True, exist_ok=True)
    downloaded = fetch(info, work_dir / f"{info.hashes['sha256']}.{kind}")
    try:
        fault(f"{kind}:downloaded")
        write_verified(
            destination, lambda write: produce(downloaded, write), length=release.length,
            sha256=release.hashes["sha256"], fault=fault, point=kind,
        )  # fmt: skip
    finally:
        downloaded.unlink(missing_ok=True)
    return Transfer(kind, info.path, info.length)


def fetch_delta(
    updater: Updater,
    release: TargetFile,
    active_model: Path | None,
    places: tuple[Path, Path],
    fetch: FetchTarget,
    fault: Fault = no_fault,
    *,
    recorded_sha256: str | None = None,
) -> Transfer | None:
    """Rebuild `release` into `places` (destination, work folder) from the delta signed
    for `active_model`; None (logged) if there is none or it is unusable, so the caller
    fetches the artifact.

    `recorded_sha256`, the hash the active slot's record gives its model, only names the
    delta to look for: without one signed, the model is not read (50 MB of reading and
    hashing saved); with one, the model is hashed here and must match its `from_sha256`."""
    if active_model is None:
        return None
    try:
        hashed: tuple[bytes, str] | None = None
        if recorded_sha256 is None:
            hashed = _file_sha256(active_model)
            recorded_sha256 = hashed[1]
        path = ota_delta.delta_target_path(release.path, recorded_sha256)
        info = _signed(updater, path)
        if info is None:
            logger.info("no delta to %s from %s", release.path, recorded_sha256[:12])
            return None
        old, old_sha = hashed or _file_sha256(active_model)  # the base is the bytes, re-hashed
        _expect(info.custom, "delta", {
            "from_sha256": old_sha, "to": release.path,
            "to_sha256": release.hashes["sha256"], "to_length": release.length,
        }, path)  # fmt: skip

        def produce(downloaded: Path, write: Callable[[bytes], Any]) -> None:
            delta = downloaded.read_bytes()
            header = ota_delta.read_header(delta)
            if (header.new_sha256, header.new_length) != (release.hashes["sha256"], release.length):
                raise _Unusable(f"{path} builds {header.new_sha256[:12]}, not this release")
            ota_delta.apply_into(old, delta, write, max_length=release.length)

        transfer = _fetch_and_write("delta", release, info, places, fetch, fault, produce)
    except Exception as err:  # whatever went wrong, the full artifact is the way
        logger.warning("delta to %s not used, fetching the artifact: %s", release.path, err)
        return None
    logger.info(
        "%s rebuilt from a delta of %d bytes (artifact: %d)", release.path, info.length,
        release.length,
    )
    return transfer


def fetch_compressed(
    updater: Updater,
    release: TargetFile,
    places: tuple[Path, Path],
    fetch: FetchTarget,
    fault: Fault = no_fault,
) -> Transfer | None:
    """Fetch `release`'s zstd-compressed copy and decompress it into `places`
    (destination, work folder); None (logged) if there is none or it is unusable."""
    try:
        path = ota_delta.compressed_target_path(release.path)
        info = _signed(updater, path)
        if info is None:
            return None
        _expect(info.custom, "compressed", {
            "of": release.path, "sha256": release.hashes["sha256"], "length": release.length,
        }, path)  # fmt: skip

        def produce(downloaded: Path, write: Callable[[bytes], Any]) -> None:
            with open(downloaded, "rb") as source:
                ota_delta.decompress_capped(source, write, release.length)

        return _fetch_and_write("compressed", release, info, places, fetch, fault, produce)
    except Exception as err:
        logger.warning("compressed %s not used, fetching the artifact: %s", release.path, err)
        return None
