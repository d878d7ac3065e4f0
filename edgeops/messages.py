"""Wire payloads exchanged over MQTT. Every payload is versioned JSON (`"schema": 1`).

Both sides call `decode()`: a payload that is too large, not JSON or not of the schema
raises `PayloadError`, which callers count and log; it never crashes a process.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeops.errors import PayloadError
from edgeops.topics import DEVICE_ID_PATTERN

MAX_PAYLOAD_BYTES = 256 * 1024
DEVICE_ID_FIELD = Field(pattern=DEVICE_ID_PATTERN.pattern)

AgentState = Literal[
    "starting",
    "idle",  # no model yet
    "running",  # serving the active model, no update in progress
    # the update of `target`, in order:
    "downloading",
    "verifying",
    "staged",
    "smoke_testing",
    "switching",
    "health_window",  # serving `target`, comparing its health with the previous model
    "committed",  # `target` passed its health window and is the active model
    # failure paths of the update of `target`:
    "update_failed",  # refused before the switch; the previous model keeps serving
    "rolling_back",
    "rolled_back",  # switched back to the previous model; `reason` says why
    "offline",  # published by the broker as the last will
]


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=1, alias="schema")


class DeviceStatus(WireMessage):
    """Retained on `devices/<id>/status`: what the device runs and what it is doing."""

    device_id: str = DEVICE_ID_FIELD
    online: bool
    state: AgentState
    model: str | None = None
    version: int | None = None
    release: str | None = None  # the target path of the active model
    target: str | None = None  # the target path of the update in progress or last attempted
    reason: str | None = None  # why the last update failed, if it did
    progress: float | None = Field(default=None, ge=0, le=1)  # of the download in progress
    agent_version: str | None = None
    timestamp: float = Field(default_factory=time.time)


class LatencySummary(WireMessage):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)


class ConfidenceSummary(WireMessage):
    mean: float = Field(ge=0, le=1)
    minimum: float = Field(ge=0, le=1)
    histogram: list[int]  # 10 equal bins over [0, 1]


class TelemetryBatch(WireMessage):
    """One window of inference statistics. Never carries raw inputs."""

    message_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=8, max_length=64)
    device_id: str = DEVICE_ID_FIELD
    model: str | None = None
    version: int | None = None
    window_start: float
    window_end: float
    count: int = Field(ge=0)
    errors: int = Field(ge=0)
    latency: LatencySummary | None = None
    confidence: ConfidenceSummary | None = None
    predicted_classes: list[int] = Field(default_factory=list)  # counts per class
    feature_histograms: list[list[int]] = Field(default_factory=list)  # per feature, per bin
    rss_mb: float | None = None
    cpu_percent: float | None = None
    # Batches the agent's outbox dropped (oldest first, when full) since it was created.
    outbox_dropped: int | None = Field(default=None, ge=0)


class Command(WireMessage):
    """Sent by the server on `devices/<id>/cmd`."""

    command_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=8, max_length=64)
    kind: Literal["update", "rollback", "config"]
    target: str | None = None  # TUF target path, for `update`
    issued_at: float = Field(default_factory=time.time)


MessageT = TypeVar("MessageT", bound=WireMessage)


def encode(message: WireMessage) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode(message_type: type[MessageT], payload: bytes) -> MessageT:
    """Parse and validate `payload`; raise PayloadError naming what was wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{message_type.__name__} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
            reason="oversized",
        )
    try:
        # pydantic-core parses and validates in one pass: ingest's hottest path.
        return message_type.model_validate_json(payload)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise PayloadError(
                f"{message_type.__name__} payload is not JSON: {first['msg']}", reason="malformed"
            ) from err
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise PayloadError(
            f"{message_type.__name__} payload invalid at {where}: {first['msg']}"
        ) from err
