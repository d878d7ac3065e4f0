"""On-device privacy for one telemetry window: a minimum count and Laplace noise.

Off by default. With `min_count`, a window of fewer predictions sends no sketches at all
(`privacy.suppressed`). With `epsilon`, every sketch count gets Laplace noise of scale
sensitivity / epsilon, where the sensitivity is the number of sketch rows one prediction
touches (each feature histogram, the class x confidence count, the class counts, the
confidence histogram and, with feedback, the confusion), so the window's sketches are
epsilon-differentially private with respect to one prediction. Noisy counts are rounded and
clipped to [0, count]. `count`, `errors`, latency and the confidence mean and minimum are
sent as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgeops.errors import ConfigError
from edgeops.messages import PrivacyInfo

__all__ = ["ProtectedSketches", "WindowPrivacy", "protect"]

# Sketches dropped from a suppressed window (the confidence histogram stays: health needs it).
SUPPRESSED = ("feature_histograms", "class_confidence", "confusion", "predicted_classes")


@dataclass(frozen=True)
class WindowPrivacy:
    """`min_count`: below it a window's sketches are not sent. `epsilon`: Laplace noise."""

    min_count: int = 0
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.min_count < 0:
            raise ConfigError(f"telemetry_min_count must be >= 0, got {self.min_count}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"telemetry_epsilon must be > 0, got {self.epsilon}")

    @property
    def enabled(self) -> bool:
        return self.min_count > 0 or self.epsilon is not None


@dataclass(frozen=True)
class ProtectedSketches:
    """The sketches to send, as lists, and what was done to them (None: nothing)."""

    lists: dict[str, list] = field(default_factory=dict)
    info: PrivacyInfo | None = None


def protect(
    privacy: WindowPrivacy,
    count: int,
    sketches: dict[str, np.ndarray | None],
    rng: np.random.Generator,
) -> ProtectedSketches:
    """Apply `privacy` to a window of `count` predictions; None sketches are left out."""
    present = {name: counts for name, counts in sketches.items() if counts is not None}
    if not privacy.enabled:
        return ProtectedSketches({name: counts.tolist() for name, counts in present.items()})
    mechanism: Literal["none", "laplace"] = "laplace" if privacy.epsilon is not None else "none"
    if count < privacy.min_count:
        kept = {n: c for n, c in present.items() if n not in SUPPRESSED}
        present = kept
        suppressed = True
    else:
        suppressed = False
    if privacy.epsilon is not None:
        present = _laplace(present, count, privacy.epsilon, rng)
    info = PrivacyInfo(
        mechanism=mechanism,
        epsilon=privacy.epsilon,
        min_count=privacy.min_count,
        suppressed=suppressed,
    )
    return ProtectedSketches({n: c.tolist() for n, c in present.items()}, info)


def _laplace(
    sketches: dict[str, np.ndarray], count: int, epsilon: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    sensitivity = sum(c.shape[0] if c.ndim == 2 and n == "feature_histograms" else 1
                      for n, c in sketches.items())
    scale = max(sensitivity, 1) / epsilon
    noisy: dict[str, np.ndarray] = {}
    for name, counts in sketches.items():
        values = counts + rng.laplace(0.0, scale, counts.shape)
        clipped = np.clip(np.rint(values), 0, count).astype(np.int64)
        if name == "confusion" and clipped.sum() > count:  # labelled ones cannot exceed count
            clipped = np.floor(clipped * (count / clipped.sum())).astype(np.int64)
        noisy[name] = clipped
    return noisy
