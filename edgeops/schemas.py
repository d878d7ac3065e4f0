"""What a release says about its model: input schema, golden vectors, release info.

`ReleaseInfo` travels in the TUF target's `custom` field, so it is covered by the
targets signature; the agent trusts nothing about a model that is not in here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeops.sketches import CONFIDENCE_BINS

__all__ = [
    "CALIBRATION_BINS",
    "GoldenVectors",
    "HealthPolicy",
    "InputSchema",
    "MODEL_CARD_MAX_BYTES",
    "ModelFormat",
    "MonitoringReference",
    "ReleaseInfo",
    "StrictModel",
    "model_card_json",
    "target_path",
]

ModelFormat = Literal["fp32", "int8"]
# Top-1 confidence bins of the monitoring reference: 10 equal bins over [0, 1].
CALIBRATION_BINS = CONFIDENCE_BINS  # calibration cells are telemetry's confidence bins
# The signed part of a model card travels in every device's targets metadata: keep it small.
MODEL_CARD_MAX_BYTES = 16 * 1024


def model_card_json(card: dict[str, Any]) -> str:
    """The card as compact, key-sorted JSON: how it is signed, and what its size cap counts."""
    return json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputSchema(StrictModel):
    """The model's single input tensor and the fixed histogram bins of its features."""

    name: str = "input"
    shape: list[int | None] = Field(description="None marks the batch dimension")
    dtype: Literal["float32"] = "float32"
    min_value: float
    max_value: float
    # Shared bin edges for every feature; telemetry histograms and drift references use them.
    feature_bin_edges: list[float] = Field(min_length=2)

    @property
    def num_features(self) -> int:
        n = 1
        for dim in self.shape[1:]:
            if dim is None:
                raise ValueError("only the batch dimension may be None")
            n *= dim
        return n

    @property
    def num_bins(self) -> int:
        return len(self.feature_bin_edges) - 1

    @model_validator(mode="after")
    def _check(self) -> InputSchema:
        if self.min_value >= self.max_value:
            raise ValueError("min_value must be below max_value")
        edges = self.feature_bin_edges
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError("feature_bin_edges must increase strictly")
        return self


class GoldenVectors(StrictModel):
    """Inputs and the outputs the released model must reproduce, within `atol`."""

    inputs: list[list[float]] = Field(min_length=1)
    outputs: list[list[float]] = Field(min_length=1)
    atol: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> GoldenVectors:
        if len(self.inputs) != len(self.outputs):
            raise ValueError("golden inputs and outputs must pair up")
        return self


class HealthPolicy(StrictModel):
    """How the agent judges a new model after the switch, against the previous model.

    The window closes when `window_s` has passed and at least `min_samples` predictions
    were served, or when `max_window_s` has passed whatever the traffic (a quiet device
    commits on its smoke test alone and says so). A regression beyond any threshold rolls
    back: error rate up by more than `max_error_rate_increase` (absolute), p95 latency
    above `max_p95_latency_ratio` x the previous model's and at least `latency_slack_ms`
    slower, or mean top-class confidence down by more than `max_confidence_drop`.
    """

    window_s: float = Field(default=60.0, ge=0)
    min_samples: int = Field(default=50, ge=0)
    max_window_s: float | None = Field(default=None, ge=0)  # default: 5 x window_s
    max_error_rate_increase: float = Field(default=0.05, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=2.0, ge=1)
    latency_slack_ms: float = Field(default=5.0, ge=0)
    max_confidence_drop: float = Field(default=0.10, ge=0, le=1)

    @property
    def deadline_s(self) -> float:
        return self.max_window_s if self.max_window_s is not None else 5 * self.window_s


class MonitoringReference(StrictModel):
    """What the released model does on the task's held-out split, for the fleet monitor.

    `feature_histograms` has the telemetry schema 2 layout (B+2 counts per feature:
    underflow, the bins, overflow). `calibration[c][b]` is P(prediction correct | predicted
    class c, top-1 confidence bin b), fitted by histogram binning; `calibration_counts` are
    the predictions behind each cell (cells with none are filled from the bin's pooled value
    across classes, then from the bin midpoint).
    """

    sample_count: int = Field(ge=1)
    feature_histograms: list[list[int]] = Field(min_length=1)
    predicted_classes: list[int] = Field(min_length=2)
    class_confidence: list[list[int]]
    calibration: list[list[float]]
    calibration_counts: list[list[int]]
    accuracy: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> MonitoringReference:
        n = self.sample_count
        width = len(self.feature_histograms[0])
        if width < 3:
            raise ValueError("feature_histograms need B+2 >= 3 counts per feature")
        for index, row in enumerate(self.feature_histograms):
            if len(row) != width or min(row) < 0 or sum(row) != n:
                raise ValueError(
                    f"feature_histograms[{index}] must have {width} non-negative counts "
                    f"summing to sample_count {n}"
                )
        classes = len(self.predicted_classes)
        if min(self.predicted_classes) < 0 or sum(self.predicted_classes) != n:
            raise ValueError("predicted_classes must be non-negative and sum to sample_count")
        for name in ("class_confidence", "calibration", "calibration_counts"):
            rows = getattr(self, name)
            if len(rows) != classes or any(len(r) != CALIBRATION_BINS for r in rows):
                raise ValueError(f"{name} must have shape ({classes}, {CALIBRATION_BINS})")
        if any(c < 0 for r in self.class_confidence for c in r) or [
            sum(r) for r in self.class_confidence
        ] != self.predicted_classes:
            raise ValueError("class_confidence rows must sum to predicted_classes")
        if any(c < 0 for r in self.calibration_counts for c in r):
            raise ValueError("calibration_counts must be non-negative")
        if any(not 0.0 <= v <= 1.0 for r in self.calibration for v in r):
            raise ValueError("calibration values are probabilities in [0, 1]")
        return self


class ReleaseInfo(StrictModel):
    """The `custom` field of a release's TUF target."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    version: int = Field(ge=1)
    format: ModelFormat
    input: InputSchema
    output_name: str
    num_classes: int = Field(ge=2)
    golden: GoldenVectors
    drift_reference: list[list[int]] | None = None  # per feature, counts per bin
    min_agent_version: str | None = Field(default=None, pattern=r"^\d+(\.\d+){0,2}$")
    # The ai.onnx opset the model needs; an agent whose onnxruntime is older refuses it.
    required_opset: int | None = Field(default=None, ge=1)
    health: HealthPolicy | None = None  # None: the agent's defaults
    # Held-out reference and calibration for the fleet monitor (telemetry schema 2 layout).
    monitoring: MonitoringReference | None = None
    # The signed part of the release's model card (server.governance.model_card; JSON Schema
    # schemas/model_card.schema.json), at most MODEL_CARD_MAX_BYTES as compact JSON.
    model_card: dict[str, Any] | None = None

    @field_validator("model_card", mode="before")
    @classmethod
    def _card_from_text(cls, value: Any) -> Any:
        """`to_custom` signs the card as one JSON text (its floats exact); read it back."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise ValueError(f"model_card is not valid JSON: {err}") from err
        return value

    @field_validator("model_card")
    @classmethod
    def _card_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            size = len(model_card_json(value).encode())
            if size > MODEL_CARD_MAX_BYTES:
                raise ValueError(
                    f"model_card is {size} bytes as JSON, more than {MODEL_CARD_MAX_BYTES}"
                )
        return value

    def to_custom(self) -> dict:
        """The TUF `custom` value. TUF signs canonical JSON, which has no floats, so every
        float travels as its shortest round-trip string; `from_custom` reads it back exactly.
        The model card, whose fields have no declared types to read strings back into
        floats, travels as one compact JSON text instead."""
        fields = self.model_dump(mode="json", by_alias=True)
        card = fields.pop("model_card")
        custom = json.loads(json.dumps({"edgeops": fields}), parse_float=str)
        if card is not None:
            custom["edgeops"]["model_card"] = model_card_json(card)
        return custom

    @classmethod
    def from_custom(cls, custom: dict | None) -> ReleaseInfo:
        if not isinstance(custom, dict) or "edgeops" not in custom:
            raise ValueError("target has no 'edgeops' release info in its custom field")
        return cls.model_validate(custom["edgeops"])


def target_path(model: str, version: int, fmt: ModelFormat) -> str:
    """The TUF target path of a release artifact."""
    return f"{model}/{version}/model.{fmt}.onnx"
