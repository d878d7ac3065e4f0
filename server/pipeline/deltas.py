"""Deltas from the releases devices run to a new one, computed when it is published.

For each earlier release of the same model and format that some device of the fleet still
reports running (the inventory's `Device.release`), the new artifact is encoded as an
`edgeops.ota_delta` delta from the old one: integer initializers that keep their name,
type and size become element-wise differences, the rest literal bytes, all compressed
with zstd against the old file. A delta is kept only if it is clearly smaller than what
the agent would fetch without it (`MAX_DELTA_RATIO`); each is stored in the artifact
store and signed as its own TUF target beside the release, in the same targets version:

    digits/3/model.int8.onnx                                         the release
    digits/3/deltas/<old sha256>.model.int8.onnx.delta               custom {"delta": ...}
    digits/3/model.int8.onnx.zst                                     custom {"compressed": ...}

The custom field names the base and the exact release target, sha256 and length, so an
agent refuses a delta meant for something else before it applies it. The zstd-compressed
copy of the artifact is signed too when it is smaller by a margin (`MAX_COMPRESSED_RATIO`,
`MIN_SAVED_BYTES`).

Where the raw data of each initializer lies is read from the ONNX protobuf wire format
(ModelProto.graph -> GraphProto.initializer -> TensorProto.raw_data), which gives byte
offsets that a parsed `onnx.ModelProto` does not.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgeops import ota_delta
from edgeops.ota_delta import Region
from server.db.tables import Device
from server.registry.artifact_store import ArtifactStore
from server.trust.repository import TargetEntry

__all__ = [
    "MAX_COMPRESSED_RATIO",
    "MAX_DELTA_RATIO",
    "MIN_SAVED_BYTES",
    "AuxiliaryTarget",
    "Initializer",
    "auxiliary_targets",
    "compressed_target",
    "delta_regions",
    "delta_target",
    "initializers",
    "running_bases",
]

logger = logging.getLogger(__name__)

MAX_DELTA_RATIO = 0.9  # a delta at least 10 % smaller than what it replaces, or none
MAX_COMPRESSED_RATIO = 0.9
# Every signed target costs each agent ~350 bytes of targets metadata per refresh, so a
# copy that saves less than this is not worth listing (nor a delta of a tiny model).
MIN_SAVED_BYTES = 4096
COMPRESSION_LEVEL = 19

# TensorProto.DataType -> bytes per element, for the integer types a delta diffs.
_INTEGER_WIDTHS = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 12: 4, 7: 8, 13: 8}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 8, 9


@dataclass(frozen=True)
class Initializer:
    """A graph initializer's raw data: `length` bytes at `offset` of the file."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    offset: int
    length: int


@dataclass(frozen=True)
class AuxiliaryTarget:
    """Bytes to store and sign beside a release: a delta or the compressed artifact."""

    path: str
    data: bytes
    custom: dict[str, Any]


# The ONNX wire format -----------------------------------------------------------------


def _varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or varint value) of a message."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at, end)
            yield number, wire, value, value
        elif wire == 1:
            yield number, wire, at, at + 8
            at += 8
        elif wire == 2:
            size, at = _varint(data, at, end)
            if at + size > end:
                raise ValueError("length-delimited field runs past its message")
            yield number, wire, at, at + size
            at += size
        elif wire == 5:
            yield number, wire, at, at + 4
            at += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if at != end:
        raise ValueError("message runs past its end")


def initializers(data: bytes) -> dict[str, Initializer]:
    """The main graph's initializers that keep their bytes in `raw_data`, by name
    (ValueError if `data` is not a well-formed ONNX protobuf)."""
    found: dict[str, Initializer] = {}
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        for g_number, g_wire, g_start, g_end in _fields(data, start, end):
            if g_number == _GRAPH_INITIALIZER and g_wire == 2:
                tensor = _tensor(data, g_start, g_end)
                if tensor is not None:
                    found[tensor.name] = tensor
    return found


def _tensor(data: bytes, start: int, end: int) -> Initializer | None:
    name, data_type, dims, raw = None, 0, [], None
    for number, wire, value_start, value_end in _fields(data, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = data[value_start:value_end].decode("utf-8", "replace")
        elif number == _TENSOR_TYPE and wire == 0:
            data_type = value_start
        elif number == _TENSOR_DIMS and wire == 0:
            dims.append(value_start)
        elif number == _TENSOR_DIMS and wire == 2:  # packed
            at = value_start
            while at < value_end:
                dim, at = _varint(data, at, value_end)
                dims.append(dim)
        elif number == _TENSOR_RAW and wire == 2:
            raw = (value_start, value_end - value_start)
    if name is None or raw is None:
        return None
    return Initializer(name, data_type, tuple(dims), raw[0], raw[1])


def delta_regions(old: bytes, new: bytes) -> list[Region]:
    """The integer initializers of `new` with a same-named one of the same type and shape
    in `old`, as delta regions (none if either file is not an ONNX model)."""
    try:
        before, after = initializers(old), initializers(new)
    except ValueError as err:
        logger.warning("no tensor regions for a delta: %s", err)
        return []
    regions = []
    for name, tensor in after.items():
        width = _INTEGER_WIDTHS.get(tensor.data_type)
        previous = before.get(name)
        if (
            width is None
            or previous is None
            or (previous.data_type, previous.dims, previous.length)
            != (tensor.data_type, tensor.dims, tensor.length)
            or tensor.length % width
            or tensor.length == 0
        ):
            continue
        regions.append(Region(previous.offset, tensor.offset, tensor.length, width))
    return regions


# Which deltas to offer ------------------------------------------------------------------


def running_bases(session_factory: sessionmaker, release_target: str) -> set[str]:
    """The target paths of other releases of the same model and format that devices run."""
    directory, _, name = release_target.rpartition("/")
    model = directory.split("/")[0]
    with session_factory() as session:
        paths = session.scalars(
            select(Device.release).where(Device.release.like(f"{model}/%")).distinct()
        ).all()
    return {
        path
        for path in paths
        if path and path != release_target and path.split("/")[0] == model
        and path.rpartition("/")[2] == name
    }


def delta_target(
    release_target: str, new: bytes, base: TargetEntry, old: bytes, *, best_bytes: int
) -> AuxiliaryTarget | None:
    """The delta from `old` (the artifact of the signed target `base`) to `new`, or None
    unless it is at most `MAX_DELTA_RATIO` of `best_bytes` (what an agent would fetch
    otherwise: the artifact, or its compressed copy) and saves `MIN_SAVED_BYTES`."""
    if hashlib.sha256(old).hexdigest() != base.sha256:
        logger.warning("artifact of %s does not match its signed hash: no delta", base.path)
        return None
    delta = ota_delta.encode(old, new, delta_regions(old, new), level=COMPRESSION_LEVEL)
    if len(delta) > min(MAX_DELTA_RATIO * best_bytes, best_bytes - MIN_SAVED_BYTES):
        logger.info(
            "delta %s -> %s: %d bytes against %d without it, not worth it", base.path,
            release_target, len(delta), best_bytes,
        )
        return None
    custom = {
        "delta": {
            "from": base.path,
            "from_sha256": base.sha256,
            "to": release_target,
            "to_sha256": hashlib.sha256(new).hexdigest(),
            "to_length": len(new),
            "format": ota_delta.FORMAT_VERSION,
        }
    }
    return AuxiliaryTarget(ota_delta.delta_target_path(release_target, base.sha256), delta, custom)


def compressed_target(release_target: str, new: bytes) -> AuxiliaryTarget | None:
    """The zstd-compressed artifact, or None unless it is `MAX_COMPRESSED_RATIO` of the
    artifact or less and saves `MIN_SAVED_BYTES`."""
    import zstandard

    compressed = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compress(
        new
    )
    if len(compressed) > min(MAX_COMPRESSED_RATIO * len(new), len(new) - MIN_SAVED_BYTES):
        return None
    custom = {
        "compressed": {
            "of": release_target,
            "sha256": hashlib.sha256(new).hexdigest(),
            "length": len(new),
            "codec": "zstd",
        }
    }
    return AuxiliaryTarget(ota_delta.compressed_target_path(release_target), compressed, custom)


def auxiliary_targets(
    session_factory: sessionmaker,
    store: ArtifactStore,
    signed: list[TargetEntry],
    release_target: str,
    artifact: Path,
) -> list[AuxiliaryTarget]:
    """The deltas (from every release devices run) and compressed copy to sign beside
    `release_target`. Never raises for a base it cannot use: it logs and skips it."""
    new = artifact.read_bytes()
    by_path = {entry.path: entry for entry in signed}
    compressed = compressed_target(release_target, new)
    found: list[AuxiliaryTarget] = [] if compressed is None else [compressed]
    best_bytes = len(new) if compressed is None else len(compressed.data)
    for base_path in sorted(running_bases(session_factory, release_target)):
        base = by_path.get(base_path)
        if base is None or ota_delta.is_auxiliary_target(base.custom):
            continue  # withdrawn, or never a release
        try:
            old = store.path_for(base.sha256).read_bytes()
        except OSError as err:
            logger.warning("no delta from %s: its artifact is unreadable: %s", base_path, err)
            continue
        made = delta_target(release_target, new, base, old, best_bytes=best_bytes)
        if made is not None:
            found.append(made)
    return found
