"""HTTP `Range` for responses held in memory (RFC 9110, single byte ranges).

Metadata files are small and some are replaced in place (timestamp.json, root.json), so
they are read once and sliced here instead of being streamed from a path that may be
renamed over mid-response. Artifacts are immutable and use Starlette's FileResponse.

A header longer than `MAX_RANGE_HEADER_CHARS` is answered 416 before anything parses it:
one range of two 19-digit positions needs 45 characters, while thousands of digits make
int() raise (Python's 4,300-digit limit) or take quadratic time, and thousands of ranges
make Starlette's FileResponse sort them and send a multipart reply with a part for each.
"""

from __future__ import annotations

import re

from starlette.responses import Response

__all__ = [
    "MAX_RANGE_HEADER_CHARS",
    "RangeNotSatisfiable",
    "bytes_response",
    "parse_range",
    "range_too_long",
    "unsatisfiable",
]

MAX_RANGE_HEADER_CHARS = 100
_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """The range lies entirely outside the representation, or the header is too long."""


def range_too_long(header: str | None) -> bool:
    """Whether a `Range` header is refused unparsed (see the module docstring)."""
    return header is not None and len(header) > MAX_RANGE_HEADER_CHARS


def unsatisfiable(size: int, headers: dict[str, str] | None = None) -> Response:
    """The 416 answer for a representation of `size` bytes."""
    return Response(
        status_code=416, headers={**(headers or {}), "content-range": f"bytes */{size}"}
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte interval a `Range` header asks for, or None to send everything.

    Headers that are malformed, multi-range or not in bytes are ignored (RFC 9110 lets a
    server do so); a range that starts past the end, or a header longer than
    MAX_RANGE_HEADER_CHARS, raises RangeNotSatisfiable.
    """
    if header is None:
        return None
    if range_too_long(header):
        raise RangeNotSatisfiable
    match = _SINGLE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size)


def bytes_response(
    data: bytes, range_header: str | None, media_type: str, headers: dict[str, str] | None = None
) -> Response:
    """A 200, 206 or 416 response for `data` honouring `range_header`."""
    base = {"accept-ranges": "bytes", **(headers or {})}
    try:
        interval = parse_range(range_header, len(data))
    except RangeNotSatisfiable:
        return unsatisfiable(len(data), base)
    if interval is None:
        return Response(content=data, media_type=media_type, headers=base)
    start, end = interval
    return Response(
        content=data[start:end],
        status_code=206,
        media_type=media_type,
        headers={**base, "content-range": f"bytes {start}-{end - 1}/{len(data)}"},
    )
