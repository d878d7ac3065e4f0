"""A synthetic fleet for the monitor's unit tests: a known truth, a reference drawn from it,
windows drawn from the truth or a shifted version of it (counts only, like devices send)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.monitoring.detector import Reference, WindowInput
from server.monitoring.thresholds import calibrate

F, B, CLASSES = 16, 10, 4
EDGES = np.linspace(0.0, 16.0, B + 1)


@dataclass
class Fleet:
    truth: np.ndarray  # (F, B+2) probabilities
    classes: np.ndarray  # (CLASSES,)
    reference: Reference
    rng: np.random.Generator

    def null(self, n: int):  # noqa: ANN201 - test helper
        return calibrate(
            self.reference.feature_histograms, EDGES, n,
            predicted_classes=self.reference.predicted_classes,
        )

    def window(
        self,
        cohort: str,
        n: int,
        *,
        shift: float = 0.0,
        out_of_range: float = 0.0,
        features: slice = slice(None),
        classes: np.ndarray | None = None,
    ) -> WindowInput:
        truth = self.truth.copy()
        rolled = np.roll(truth, 1, axis=1)
        rolled[:, 0] = 0.0
        rolled /= rolled.sum(axis=1, keepdims=True)
        truth[features] = (1 - shift) * truth[features] + shift * rolled[features]
        truth[features, -1] += out_of_range
        truth /= truth.sum(axis=1, keepdims=True)
        hist = np.stack([self.rng.multinomial(n, p) for p in truth])
        prior = self.classes if classes is None else classes
        return WindowInput(cohort, n, hist, self.rng.multinomial(n, prior))


def make_fleet(seed: int = 0, reference_rows: int = 400) -> Fleet:
    rng = np.random.default_rng(seed)
    truth = np.pad(rng.dirichlet(np.full(B, 0.8), F), ((0, 0), (1, 1)))
    classes = np.full(CLASSES, 1 / CLASSES)
    ref = np.stack([rng.multinomial(reference_rows, p) for p in truth])
    reference = Reference("m/1/model.int8.onnx", ref, EDGES, rng.multinomial(reference_rows, classes))
    return Fleet(truth, classes, reference, rng)
