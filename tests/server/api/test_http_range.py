from __future__ import annotations

import pytest

from server.api.http_range import RangeNotSatisfiable, bytes_response, parse_range

pytestmark = [pytest.mark.ota]


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-3", 10, (0, 4)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("bytes = 1-1", 10, (1, 2)),
        ("bytes=5-2", 10, None),  # invalid spec: ignored, whole body
        ("bytes=0-1,4-5", 10, None),  # multi-range: whole body
        ("items=0-1", 10, None),
        ("bytes=x-y", 10, None),
        ("bytes=-", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_bytes_response_statuses() -> None:
    data = b"0123456789"
    assert bytes_response(data, None, "text/plain").status_code == 200
    partial = bytes_response(data, "bytes=2-4", "text/plain")
    assert (partial.status_code, partial.body) == (206, b"234")
    assert partial.headers["content-range"] == "bytes 2-4/10"
    refused = bytes_response(data, "bytes=50-", "text/plain")
    assert (refused.status_code, refused.headers["content-range"]) == (416, "bytes */10")
