"""Model deltas: a new release as differences to one a device already runs.

A delta turns the bytes of an old model file into the bytes of a new one. The server
knows (from the ONNX wire format) where each integer initializer's raw data lies in both
files; for those `Region`s the delta carries the element-wise difference new - old
(modulo 2**bits: a warm-started retrain moves most int8 weights by 0 or +-1), and every
other byte of the new file literally. The whole op stream is compressed with zstd using
the old file as a raw-content dictionary, so literals the old file also holds (the graph,
names, most scales) cost a few bytes each, as `zstd --patch-from` does.

    header   MAGIC (8 bytes) | format version (u8) | old sha256 (32) | new sha256 (32)
             | new length (u64, little-endian)
    body     one zstd frame (content checksum on) of ops:
               0x01 literal   u32 length, the bytes
               0x02 diff      u8 width (1, 2, 4 or 8), u64 old offset, u32 length (bytes),
                              the differences (little-endian, `width` bytes each)
               0x00 end

`apply` refuses (DeltaError) a delta for another base before decompressing anything, and
never produces more than the new length, nor more than the cap the caller gives (the
signed length): a malformed, truncated or forged delta raises, it never yields a file the
header does not describe. Being right is still the caller's job: the agent checks the
result against the signed full length and sha256 before it uses it.

Pure: bytes in, bytes out (or chunks to a writer); numpy and zstandard only.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeops.errors import UpdateError

__all__ = [
    "DELTA_SUFFIX",
    "FORMAT_VERSION",
    "MAGIC",
    "DeltaError",
    "DeltaHeader",
    "Region",
    "apply",
    "apply_into",
    "compressed_target_path",
    "decompress_capped",
    "delta_target_path",
    "encode",
    "is_auxiliary_target",
    "read_header",
]

MAGIC = b"EOPSDLTA"
FORMAT_VERSION = 1
DELTA_SUFFIX = ".delta"
COMPRESSED_SUFFIX = ".zst"
_HEADER = struct.Struct("<8sB32s32sQ")
_LITERAL, _DIFF, _END = 0x01, 0x02, 0x00
_WIDTHS = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_CHUNK = 1 << 20  # ops are split so that no read asks for more than this at once
_FEED = 64  # compressed bytes fed to zstd at a time
_LEVEL = 19
_MAX_WINDOW = 1 << 27  # the most memory a decoder window may ask for (zstd's own default cap)


class DeltaError(UpdateError):
    """A delta that cannot be applied: another base, malformed, truncated or too long."""


@dataclass(frozen=True)
class Region:
    """An initializer's raw data: `length` bytes at `old_offset` in the old file and at
    `new_offset` in the new one, `width` bytes per element (1 for int8)."""

    old_offset: int
    new_offset: int
    length: int
    width: int = 1


@dataclass(frozen=True)
class DeltaHeader:
    old_sha256: str
    new_sha256: str
    new_length: int


# Target paths ---------------------------------------------------------------------------


def delta_target_path(release_target: str, old_sha256: str) -> str:
    """`digits/3/deltas/<old sha256>.model.int8.onnx.delta` for `digits/3/model.int8.onnx`."""
    directory, _, name = release_target.rpartition("/")
    return f"{directory}/deltas/{old_sha256}.{name}{DELTA_SUFFIX}"


def compressed_target_path(release_target: str) -> str:
    """`digits/3/model.int8.onnx.zst`: the release's artifact, zstd-compressed."""
    return release_target + COMPRESSED_SUFFIX


def is_auxiliary_target(custom: dict[str, Any]) -> bool:
    """Whether a signed target is a delta or a compressed copy of a release, not a release."""
    return "delta" in custom or "compressed" in custom


def auxiliary_release(custom: dict[str, Any]) -> str | None:
    """The release target a delta or compressed copy rebuilds, or None for a release."""
    if isinstance(custom.get("delta"), dict):
        return custom["delta"].get("to")
    if isinstance(custom.get("compressed"), dict):
        return custom["compressed"].get("of")
    return None


# Encoding -------------------------------------------------------------------------------


def _check_regions(old: bytes, new: bytes, regions: Sequence[Region]) -> list[Region]:
    ordered = sorted(regions, key=lambda r: r.new_offset)
    end = 0
    for region in ordered:
        if region.width not in _WIDTHS or region.length <= 0 or region.length % region.width:
            raise ValueError(f"invalid region {region}")
        if region.new_offset < end or region.new_offset + region.length > len(new):
            raise ValueError(f"region {region} overlaps another or leaves the new file")
        if region.old_offset < 0 or region.old_offset + region.length > len(old):
            raise ValueError(f"region {region} leaves the old file")
        end = region.new_offset + region.length
    return ordered


def _ops(old: bytes, new: bytes, regions: list[Region]) -> bytes:
    out = io.BytesIO()

    def literal(start: int, stop: int) -> None:
        for at in range(start, stop, _CHUNK):
            piece = new[at : min(stop, at + _CHUNK)]
            out.write(struct.pack("<BI", _LITERAL, len(piece)))
            out.write(piece)

    position = 0
    for region in regions:
        literal(position, region.new_offset)
        step = _CHUNK - _CHUNK % region.width
        for at in range(0, region.length, step):
            size = min(step, region.length - at)
            dtype = np.dtype(_WIDTHS[region.width])
            before = np.frombuffer(old, dtype, size // region.width, region.old_offset + at)
            after = np.frombuffer(new, dtype, size // region.width, region.new_offset + at)
            out.write(struct.pack("<BBQI", _DIFF, region.width, region.old_offset + at, size))
            out.write((after - before).astype(dtype).tobytes())  # wraps modulo 2**bits
        position = region.new_offset + region.length
    literal(position, len(new))
    out.write(bytes([_END]))
    return out.getvalue()


def encode(old: bytes, new: bytes, regions: Sequence[Region], *, level: int = _LEVEL) -> bytes:
    """The delta that turns `old` into `new` (ValueError for regions outside the files)."""
    import zstandard

    ops = _ops(old, new, _check_regions(old, new, regions))
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    window_log = max(20, min(27, (len(old) + len(ops)).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=window_log, write_checksum=True, write_content_size=True
    )
    body = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(ops)
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        hashlib.sha256(old).digest(),
        hashlib.sha256(new).digest(),
        len(new),
    )
    return header + body


# Applying -------------------------------------------------------------------------------


def read_header(delta: bytes) -> DeltaHeader:
    """The header of `delta`; DeltaError if it is not a delta of a format we read."""
    if len(delta) < _HEADER.size:
        raise DeltaError(f"delta of {len(delta)} bytes is shorter than its header")
    magic, version, old_sha, new_sha, new_length = _HEADER.unpack_from(delta)
    if magic != MAGIC:
        raise DeltaError("not an EdgeOps model delta (bad magic)")
    if version != FORMAT_VERSION:
        raise DeltaError(f"delta format version {version}, this agent reads {FORMAT_VERSION}")
    return DeltaHeader(old_sha.hex(), new_sha.hex(), new_length)


class _Reader:
    """Exact reads from the decompressed op stream; DeltaError when it ends early.

    The frame is fed to zstd `_FEED` bytes at a time, so a small input can never expand
    into much more than the op being read (a decompression bomb stays a few MB)."""

    def __init__(self, decompressor: Any, body: memoryview) -> None:
        self._zstd = decompressor.decompressobj()
        self._body = body
        self._fed = 0
        self._buffer = bytearray()

    def _feed(self) -> bool:
        if self._zstd.eof or self._fed >= len(self._body):
            return False
        piece = self._body[self._fed : self._fed + _FEED]
        self._fed += len(piece)
        self._buffer += self._zstd.decompress(piece)
        return True

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._feed():
                raise DeltaError("delta ends in the middle of an operation (truncated)")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def at_end(self) -> bool:
        """Whether the frame ended, checksum checked, with nothing after it."""
        while self._feed():
            pass
        return (
            not self._buffer
            and self._zstd.eof
            and self._fed == len(self._body)
            and not self._zstd.unused_data
        )


def apply_into(
    old: bytes,
    delta: bytes,
    write: Callable[[bytes], Any],
    *,
    max_length: int,
) -> DeltaHeader:
    """Apply `delta` to `old`, passing the new file to `write` in chunks; return its header.

    DeltaError if the delta is for another base, describes more than `max_length` bytes,
    is malformed or truncated, or its result does not match its own length and sha256.
    `write` may have received part of the file when it raises: write to a temporary file."""
    import zstandard

    header = read_header(delta)
    if hashlib.sha256(old).hexdigest() != header.old_sha256:
        raise DeltaError(f"delta is for base {header.old_sha256[:12]}, not for this model")
    if header.new_length > max_length:
        raise DeltaError(
            f"delta describes {header.new_length} bytes, more than the {max_length} expected"
        )
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=_MAX_WINDOW)
    digest, written = hashlib.sha256(), 0
    try:
        reader = _Reader(decompressor, memoryview(delta)[_HEADER.size :])
        while True:
            (op,) = reader.read(1)
            if op == _END:
                break
            if op == _LITERAL:
                (size,) = struct.unpack("<I", reader.read(4))
                chunk = _bounded(size, written, header.new_length, reader)
            elif op == _DIFF:
                width, offset, size = struct.unpack("<BQI", reader.read(13))
                if width not in _WIDTHS or size % width or offset + size > len(old):
                    raise DeltaError(f"malformed diff operation at output byte {written}")
                dtype = np.dtype(_WIDTHS[width])
                diff = np.frombuffer(_bounded(size, written, header.new_length, reader), dtype)
                base = np.frombuffer(old, dtype, size // width, offset)
                chunk = (base + diff).astype(dtype).tobytes()
            else:
                raise DeltaError(f"unknown delta operation {op:#x} at output byte {written}")
            digest.update(chunk)
            write(chunk)
            written += len(chunk)
        if not reader.at_end():
            raise DeltaError("delta is truncated or has data after its end")
    except zstandard.ZstdError as err:
        raise DeltaError(f"delta does not decompress: {err}") from err
    if written != header.new_length or digest.hexdigest() != header.new_sha256:
        raise DeltaError("the result of the delta does not match the length and hash it names")
    return header


def _bounded(size: int, written: int, new_length: int, reader: _Reader) -> bytes:
    if size > _CHUNK or written + size > new_length:
        raise DeltaError(f"delta operation of {size} bytes runs past the {new_length} described")
    return reader.read(size)


def apply(old: bytes, delta: bytes, max_length: int) -> bytes:
    """The new file `delta` makes from `old` (see `apply_into`)."""
    out = io.BytesIO()
    apply_into(old, delta, out.write, max_length=max_length)
    return out.getvalue()


def decompress_capped(source: Any, write: Callable[[bytes], Any], max_length: int) -> int:
    """Decompress the one zstd frame readable from `source` into `write`, refusing
    (DeltaError) more than `max_length` bytes, a truncated or broken frame, or data after
    it; return the bytes written."""
    import zstandard

    stream = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompressobj()
    written = 0
    try:
        while block := source.read(_CHUNK):
            view = memoryview(block)
            for at in range(0, len(view), _FEED):
                if stream.eof:
                    raise DeltaError("compressed artifact has data after its end")
                chunk = stream.decompress(view[at : at + _FEED])
                written += len(chunk)
                if written > max_length:
                    raise DeltaError(f"compressed artifact expands past {max_length} bytes")
                if chunk:
                    write(chunk)
    except zstandard.ZstdError as err:
        raise DeltaError(f"compressed artifact does not decompress: {err}") from err
    if not stream.eof:
        raise DeltaError("compressed artifact is truncated")
    return written
