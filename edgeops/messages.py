"""Wire payloads exchanged over MQTT. Every payload is versioned JSON (`"schema": 1`).

Both sides call `decode()`: a payload that is too large, not JSON or not of the schema
raises `PayloadError`, which callers count and log; it never crashes a process.

`TelemetryBatch` has two schemas. Schema 1: per-feature histograms of B counts, values
outside the bin edges clipped into the edge bins. Schema 2 (what agents send now): B+2
counts per feature (index 0 underflow, 1..B the bins, B+1 overflow, see
`edgeops.sketches.feature_histograms_v2`), a (predicted class x confidence bin) count, the
confusion count of predictions labelled by feedback, and what privacy mechanism shaped the
counts. Sketches that cannot come from one window of `count` predictions are refused.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeops.errors import PayloadError
from edgeops.sketches import CONFIDENCE_BINS
from edgeops.switch_window import SwitchWindow
from edgeops.topics import DEVICE_ID_PATTERN

# Re-exported: the state a status reports, and when a staged update switches.
from edgeops.update_states import AgentState, SwitchMode

__all__ = [
    "CONFIDENCE_BINS",
    "DEVICE_ID_FIELD",
    "MAX_PAYLOAD_BYTES",
    "TELEMETRY_SCHEMA",
    "AgentState",
    "Command",
    "ConfidenceSummary",
    "DeviceStatus",
    "LatencySummary",
    "PrivacyInfo",
    "SwitchMode",
    "TelemetryBatch",
    "TransferInfo",
    "WireMessage",
    "decode",
    "encode",
]

MAX_PAYLOAD_BYTES = 256 * 1024
# The telemetry schema agents send.
TELEMETRY_SCHEMA: Literal[2] = 2
DEVICE_ID_FIELD = Field(pattern=DEVICE_ID_PATTERN.pattern)


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=1, alias="schema")


class TransferInfo(WireMessage):
    """How the release a status names as `target` arrived: `how` (a delta from the active
    model, its zstd-compressed copy, the full artifact, or already in the download cache),
    `bytes_received` over the network, and `full_bytes`, the signed length of the artifact
    (what a full download would have cost)."""

    how: Literal["full", "delta", "compressed", "cached"]
    bytes_received: int = Field(ge=0)
    full_bytes: int = Field(ge=1)

    @model_validator(mode="after")
    def _not_past_the_artifact(self) -> TransferInfo:
        if self.bytes_received > self.full_bytes:
            raise ValueError(
                f"bytes_received {self.bytes_received} exceeds the artifact's "
                f"full_bytes {self.full_bytes}"
            )
        return self


class DeviceStatus(WireMessage):
    """Retained on `devices/<id>/status`: what the device runs and what it is doing.

    `transfer`: how `target` arrived, once it did (None before, and from agents that do
    not report it)."""

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
    transfer: TransferInfo | None = None


class LatencySummary(WireMessage):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)


class ConfidenceSummary(WireMessage):
    mean: float = Field(ge=0, le=1)
    minimum: float = Field(ge=0, le=1)
    histogram: list[int]  # 10 equal bins over [0, 1]


class PrivacyInfo(WireMessage):
    """How the device protected the counts of one window.

    `mechanism` "none": exact counts. "laplace" / "gaussian": noise added to every count
    (rounded, clipped at 0) with `epsilon` spent on this window. `suppressed`: the window
    had fewer than `min_count` predictions, so its sketches were not sent at all.
    """

    mechanism: Literal["none", "laplace", "gaussian"] = "none"
    epsilon: float | None = Field(default=None, gt=0)
    min_count: int = Field(default=0, ge=0)
    suppressed: bool = False


class TelemetryBatch(WireMessage):
    """One window of inference statistics. Never carries raw inputs."""

    # Widens WireMessage's Literal[1]: telemetry alone has a second schema.
    schema_version: Literal[1, 2] = Field(  # type: ignore[assignment]
        default=TELEMETRY_SCHEMA, alias="schema"
    )
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
    # Per feature, per bin. Schema 1: B bins (clipped); schema 2: B+2 (under, bins, over).
    feature_histograms: list[list[int]] = Field(default_factory=list)
    rss_mb: float | None = None
    cpu_percent: float | None = None
    # Batches the agent's outbox dropped (oldest first, when full) since it was created.
    outbox_dropped: int | None = Field(default=None, ge=0)
    # Schema 2 only ----------------------------------------------------------------------
    # (num_classes, CONFIDENCE_BINS): predictions by predicted class x top-1 confidence bin.
    class_confidence: list[list[int]] | None = None
    # (num_classes, num_classes), [true][predicted]: predictions labelled in this window.
    confusion: list[list[int]] | None = None
    feedback_count: int | None = Field(default=None, ge=0)  # labels received in the window
    privacy: PrivacyInfo | None = None

    @property
    def noisy(self) -> bool:
        """True when the counts carry privacy noise, so sums need not match `count`."""
        return self.privacy is not None and self.privacy.mechanism != "none"

    @model_validator(mode="after")
    def _check_sketches(self) -> TelemetryBatch:
        if self.schema_version == 1:
            extra = [
                name
                for name in ("class_confidence", "confusion", "feedback_count", "privacy")
                if getattr(self, name) is not None
            ]
            if extra:
                raise ValueError(f"schema 1 telemetry cannot carry {', '.join(extra)}")
        if self.privacy is not None and self.privacy.suppressed:
            sent = [
                name
                for name in ("feature_histograms", "class_confidence", "confusion")
                if getattr(self, name)
            ]
            if sent:
                raise ValueError(f"a suppressed window cannot carry {', '.join(sent)}")
        exact = not self.noisy
        _check_matrix(
            "feature_histograms", self.feature_histograms, self.count,
            row_sum=self.count if exact else None,
        )
        _check_counts("predicted_classes", self.predicted_classes, self.count)
        if self.class_confidence is not None:
            _check_matrix(
                "class_confidence", self.class_confidence, self.count, width=CONFIDENCE_BINS
            )
            total = sum(sum(row) for row in self.class_confidence)
            if exact and total != self.count:
                raise ValueError(f"class_confidence sums to {total}, not count {self.count}")
        if self.confusion is not None:
            _check_matrix("confusion", self.confusion, self.count, width=len(self.confusion))
            labelled = sum(sum(row) for row in self.confusion)
            if labelled > self.count:
                raise ValueError(f"confusion sums to {labelled}, above count {self.count}")
            if exact and self.feedback_count is not None and labelled != self.feedback_count:
                raise ValueError(
                    f"confusion sums to {labelled}, not feedback_count {self.feedback_count}"
                )
        if self.feedback_count is not None and self.feedback_count > self.count:
            raise ValueError(f"feedback_count {self.feedback_count} above count {self.count}")
        return self


def _check_counts(name: str, counts: list[int], limit: int) -> None:
    if counts and min(counts) < 0:
        raise ValueError(f"{name} has a negative count")
    if counts and max(counts) > limit:
        raise ValueError(f"{name} has a count of {max(counts)}, above the window's {limit}")


def _check_matrix(
    name: str,
    rows: list[list[int]],
    limit: int,
    *,
    width: int | None = None,
    row_sum: int | None = None,
) -> None:
    """Rows of one length (`width` if given), counts in [0, limit], each row summing to
    `row_sum` if given."""
    if not rows:
        return
    expected = len(rows[0]) if width is None else width
    for index, row in enumerate(rows):
        if len(row) != expected or not row:
            raise ValueError(f"{name}[{index}] has {len(row)} counts, expected {expected}")
        _check_counts(f"{name}[{index}]", row, limit)
        if row_sum is not None and sum(row) != row_sum:
            raise ValueError(f"{name}[{index}] sums to {sum(row)}, not count {row_sum}")


class Command(WireMessage):
    """Sent by the server on `devices/<id>/cmd`.

    `update` downloads, verifies and stages `target`, then switches to it at once, or, with
    `switch`, holds in `staged`: "window" until the device's clock (UTC) is inside
    `switch_window`, "command" until a `switch` command for the same target arrives (which
    also ends a window hold early). `rollback` of an update held in `staged` cancels it.
    """

    command_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=8, max_length=64)
    kind: Literal["update", "rollback", "config", "switch"]
    target: str | None = None  # TUF target path, for `update` and `switch`
    issued_at: float = Field(default_factory=time.time)
    # `update` only: an explicit rollback to a release older than the one the device runs.
    # Without it the agent refuses a downgrade (None keeps the payload as it always was).
    allow_downgrade: bool | None = None
    # `update` only: when the staged update switches (None: now, the payload as it was).
    switch: SwitchMode | None = None
    switch_window: str | None = Field(default=None, max_length=16)  # "HH:MM-HH:MM", UTC

    @field_validator("switch_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        return None if value is None else str(SwitchWindow.parse(value))

    @model_validator(mode="after")
    def _check_switch(self) -> Command:
        if self.kind != "update" and (self.switch is not None or self.switch_window is not None):
            raise ValueError(f"a {self.kind} command cannot carry switch or switch_window")
        if (self.switch == "window") != (self.switch_window is not None):
            raise ValueError('switch_window goes with switch "window", and only with it')
        if self.kind == "switch" and not self.target:
            raise ValueError("a switch command names the target it switches to")
        return self


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
