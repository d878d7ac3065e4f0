"""parse_message: which messages ingest accepts, and the reason it gives for the others."""

from __future__ import annotations

import json

import pytest

from edgeops.messages import MAX_PAYLOAD_BYTES, DeviceStatus, TelemetryBatch, encode
from edgeops.topics import Topics
from server.fleet.ingest.parse import Rejected, parse_message

pytestmark = [pytest.mark.telemetry]

TOPICS = Topics.for_fleet("f1")
STATUS = DeviceStatus(device_id="d1", online=True, state="running", model="digits", version=2)
BATCH = TelemetryBatch(device_id="d1", window_start=0.0, window_end=1.0, count=5, errors=0)


def _parse(topic: str, payload: bytes) -> object:
    return parse_message(TOPICS, topic, payload, len(payload))


def test_accepts_a_status_and_a_telemetry_batch() -> None:
    assert _parse(TOPICS.status("d1"), encode(STATUS)) == STATUS
    assert _parse(TOPICS.telemetry("d1"), encode(BATCH)) == BATCH


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("edgeops/other/devices/d1/status", encode(STATUS), "bad_topic"),
        ("edgeops/f1/devices/d1/extra/status", encode(STATUS), "bad_topic"),
        (TOPICS.cmd("d1"), b"{}", "bad_topic"),
        (TOPICS.status("d1"), b"", "empty"),
        (TOPICS.status("d1"), b"\xff\xfe not utf-8", "malformed"),
        (TOPICS.status("d1"), encode(STATUS)[:-7], "malformed"),  # truncated
        (TOPICS.status("d1"), b"[1, 2", "malformed"),
        (TOPICS.status("d1"), b'{"schema": 2, "device_id": "d1"}', "invalid_schema"),
        (TOPICS.status("d1"), encode(STATUS)[:-1] + b', "x": 1}', "invalid_schema"),  # extra
        (TOPICS.status("d1"), encode(BATCH), "invalid_schema"),  # telemetry on the status topic
        (TOPICS.telemetry("d1"), b"null", "invalid_schema"),
        (TOPICS.status("d2"), encode(STATUS), "device_mismatch"),
        (TOPICS.telemetry("d2"), encode(BATCH), "device_mismatch"),
    ],
)
def test_rejects_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    result = _parse(topic, payload)
    assert isinstance(result, Rejected)
    assert result.reason == reason
    assert result.detail


def test_oversized_payload_is_rejected_whether_kept_or_dropped_on_arrival() -> None:
    big = b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"
    kept = parse_message(TOPICS, TOPICS.telemetry("d1"), big, len(big))
    dropped = parse_message(TOPICS, TOPICS.telemetry("d1"), None, len(big))
    assert isinstance(kept, Rejected) and kept.reason == "oversized"
    assert isinstance(dropped, Rejected) and dropped.reason == "oversized"


def _v2(**sketches: object) -> bytes:
    """A schema-2 window of 4 predictions, 2 features x (2 bins + under/overflow), 2 classes."""
    fields: dict[str, object] = {
        "schema": 2, "device_id": "d1", "window_start": 0.0, "window_end": 1.0, "count": 4,
        "errors": 0, "predicted_classes": [3, 1],
        "feature_histograms": [[0, 2, 2, 0], [1, 1, 1, 1]],
        "class_confidence": [[0] * 9 + [3], [0] * 9 + [1]],
    }
    fields.update(sketches)
    return json.dumps(fields).encode()


@pytest.mark.monitor
def test_a_well_formed_v2_window_is_accepted() -> None:
    assert isinstance(_parse(TOPICS.telemetry("d1"), _v2()), TelemetryBatch)


@pytest.mark.monitor
@pytest.mark.parametrize(
    "sketches",
    [
        {"feature_histograms": [[0, 2, 2, 0], [1, 1, 2]]},  # ragged
        {"feature_histograms": [[0, 2, 3, -1], [1, 1, 1, 1]]},  # a negative count
        {"feature_histograms": [[0, 9, 0, 0], [1, 1, 1, 1]]},  # a bin above the window's count
        {"class_confidence": [[0] * 9 + [3], [0] * 10]},  # 3 of the window's 4 predictions
        {"class_confidence": [[0] * 8 + [3], [0] * 8 + [1]]},  # 9 confidence bins
        {"confusion": [[1, 0, 0], [0, 1, 0]], "feedback_count": 2},  # not square
        {"confusion": [[4, 1], [0, 0]], "feedback_count": 5},  # more labels than predictions
    ],
)
def test_forged_v2_sketches_are_rejected_with_a_reason(sketches: dict[str, object]) -> None:
    result = _parse(TOPICS.telemetry("d1"), _v2(**sketches))
    assert isinstance(result, Rejected)
    assert result.reason == "invalid_schema"
    assert result.detail
