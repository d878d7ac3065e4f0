"""Validate one MQTT message for ingest: pure, no I/O.

A message is accepted only if its topic is `<prefix>/devices/<id>/{status,telemetry}`, its
payload decodes as the versioned schema for that kind, and the payload's `device_id` is the
topic's (the broker ACL lets a device publish only under its own topic, so the topic is the
authenticated identity; a payload naming another device is forged or broken).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeops.errors import PayloadError
from edgeops.messages import MAX_PAYLOAD_BYTES, DeviceStatus, TelemetryBatch, decode
from edgeops.topics import Topics
from server.fleet.ingest.stats import MessageKind, RejectReason

__all__ = ["Rejected", "parse_message"]


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    detail: str
    kind: MessageKind = "unknown"


def _reason_for(err: PayloadError) -> RejectReason:
    return err.reason  # type: ignore[return-value]  # decode() sets one of RejectReason's words


def parse_message(
    topics: Topics, topic: str, payload: bytes | None, size_bytes: int
) -> DeviceStatus | TelemetryBatch | Rejected:
    """Classify one message. `payload` is None when it was dropped early for its size."""
    try:
        device_id, kind = topics.parse(topic)
    except PayloadError as err:
        return Rejected("bad_topic", str(err))
    if kind == "cmd":
        return Rejected("bad_topic", f"topic {topic!r} is a command topic, not ingested")
    if payload is None or size_bytes > MAX_PAYLOAD_BYTES:
        return Rejected("oversized", f"{size_bytes} bytes exceeds {MAX_PAYLOAD_BYTES}", kind)
    if not payload:
        return Rejected("empty", "zero-length payload", kind)
    try:
        message: DeviceStatus | TelemetryBatch = (
            decode(DeviceStatus, payload) if kind == "status" else decode(TelemetryBatch, payload)
        )
    except PayloadError as err:
        return Rejected(_reason_for(err), str(err), kind)
    if message.device_id != device_id:
        return Rejected(
            "device_mismatch",
            f"payload device_id {message.device_id!r} differs from topic device {device_id!r}",
            kind,
        )
    return message
