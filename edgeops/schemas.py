"""What a release says about its model: input schema, golden vectors, release info.

`ReleaseInfo` travels in the TUF target's `custom` field, so it is covered by the
targets signature; the agent trusts nothing about a model that is not in here.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelFormat = Literal["fp32", "int8"]


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

    def to_custom(self) -> dict:
        """The TUF `custom` value. TUF signs canonical JSON, which has no floats, so every
        float travels as its shortest round-trip string; `from_custom` reads it back exactly."""
        as_json = json.dumps({"edgeops": self.model_dump(mode="json", by_alias=True)})
        return json.loads(as_json, parse_float=str)

    @classmethod
    def from_custom(cls, custom: dict | None) -> ReleaseInfo:
        if not isinstance(custom, dict) or "edgeops" not in custom:
            raise ValueError("target has no 'edgeops' release info in its custom field")
        return cls.model_validate(custom["edgeops"])


def target_path(model: str, version: int, fmt: ModelFormat) -> str:
    """The TUF target path of a release artifact."""
    return f"{model}/{version}/model.{fmt}.onnx"
