"""Thresholds from the reference's own sampling variability, stated as a false-alarm rate.

For a window of n predictions, the null distribution of each statistic is simulated: the
"true" distribution is drawn from the reference's posterior (Dirichlet(counts + 1/2), so a
reference of a few hundred rows is not taken as exact and a bin it never saw may still be
hit), a window of n is drawn from it (multinomial), and the statistic is computed against
the fixed reference, as the detector does. A gamma distribution fitted to the draws by
moments gives smooth tail p-values (the family-wise levels needed are far below 1/draws).
Calibrations are cached per (release, n-bucket); a bucket is the power of two at or below n,
and a window is scored against its bucket's lower edge, which errs on the quiet side.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaincc
from scipy.stats import gamma

from server.monitoring.statistics import out_of_range_share, prior_shift, score_features

__all__ = [
    "DEFAULT_DRAWS",
    "CalibrationCache",
    "NullModel",
    "calibrate",
    "n_bucket",
]

logger = logging.getLogger(__name__)

DEFAULT_DRAWS = 400
_MIN_SCALE = 1e-12


@dataclass(frozen=True)
class NullModel:
    """Gamma fits (shape, scale) of each statistic's null distribution at sample size `n`.

    `features[stat]` has shape (F,); `prior` is the fit for the prediction-prior shift.
    """

    n: int
    features: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    prior: tuple[float, float] | None

    def p_values(self, stat: str, values: ArrayLike) -> NDArray[np.float64]:
        """Upper-tail p-values of `values` (..., F) for feature statistic `stat`."""
        shape, scale = self.features[stat]
        return _sf(np.asarray(values, dtype=np.float64), shape, scale)

    def prior_p_value(self, value: float) -> float:
        if self.prior is None:
            return 1.0
        return float(_sf(np.asarray(value), np.asarray(self.prior[0]), np.asarray(self.prior[1])))

    def threshold(self, stat: str, level: float) -> NDArray[np.float64]:
        """The value of `stat` per feature whose p-value is `level`."""
        shape, scale = self.features[stat]
        safe = np.maximum(shape, _MIN_SCALE)
        return np.where(scale > _MIN_SCALE, gamma.isf(level, safe, scale=np.maximum(scale, _MIN_SCALE)), 0.0)


def _sf(values: NDArray[np.float64], shape: NDArray, scale: NDArray) -> NDArray[np.float64]:
    degenerate = scale <= _MIN_SCALE
    safe_shape = np.where(degenerate, 1.0, shape)
    safe_scale = np.where(degenerate, 1.0, scale)
    p = gammaincc(safe_shape, np.maximum(values, 0.0) / safe_scale)  # = gamma.sf
    # A statistic that never moved under the null: any value above ~0 is off the charts.
    return np.where(degenerate, np.where(values > 1e-9, 0.0, 1.0), p)


def _fit(draws: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Method-of-moments gamma fit along axis 0."""
    mean = draws.mean(axis=0)
    var = draws.var(axis=0)
    ok = (mean > _MIN_SCALE) & (var > _MIN_SCALE**2)
    shape = np.where(ok, mean**2 / np.where(ok, var, 1.0), 1.0)
    scale = np.where(ok, var / np.where(mean > 0, mean, 1.0), 0.0)
    return shape, scale


def n_bucket(n: int) -> int:
    """The calibration bucket of a window of `n` predictions (power of two at or below n)."""
    if n < 1:
        raise ValueError(f"a window needs at least 1 prediction to calibrate, got {n}")
    return 1 << int(math.floor(math.log2(n)))


def _posterior_multinomial(
    counts: NDArray[np.float64], n: int, draws: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """(draws, *counts.shape) windows of n, from Dirichlet(counts + 1/2) truths."""
    alpha = counts + 0.5
    g = rng.standard_gamma(np.broadcast_to(alpha, (draws, *alpha.shape)))
    p = g / g.sum(axis=-1, keepdims=True)
    flat = p.reshape(-1, p.shape[-1])
    out = np.empty(flat.shape, dtype=np.int64)
    for i, row in enumerate(flat):
        out[i] = rng.multinomial(n, row)
    return out.reshape(p.shape)


def calibrate(
    reference: ArrayLike,
    bin_edges: ArrayLike,
    n: int,
    *,
    predicted_classes: ArrayLike | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> NullModel:
    """Simulate `draws` no-drift windows of `n` against `reference` (F, B+2) and fit."""
    if draws < 20:
        raise ValueError(f"calibration needs at least 20 draws, got {draws}")
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2:
        raise ValueError(f"reference histograms must be (features, bins), got shape {ref.shape}")
    rng = np.random.default_rng(seed)
    windows = _posterior_multinomial(ref, n, draws, rng)
    scores = score_features(ref, windows, bin_edges)
    fits = {stat: _fit(np.asarray(values)) for stat, values in scores.items()}
    fits["out_of_range"] = _fit(np.asarray(out_of_range_share(windows)))
    prior = None
    if predicted_classes is not None:
        classes = np.asarray(predicted_classes, dtype=np.float64)
        class_windows = _posterior_multinomial(classes, n, draws, rng)
        shape, scale = _fit(prior_shift(classes, class_windows)[:, None])
        prior = (float(shape[0]), float(scale[0]))
    return NullModel(n=n, features=fits, prior=prior)


class CalibrationCache:
    """NullModels per (release key, n-bucket), computed once, thread-safe."""

    def __init__(self, draws: int = DEFAULT_DRAWS, seed: int = 0) -> None:
        self._draws = draws
        self._seed = seed
        self._models: dict[tuple[str, int], NullModel] = {}
        self._lock = threading.Lock()

    def get(
        self,
        key: str,
        reference: ArrayLike,
        bin_edges: ArrayLike,
        n: int,
        predicted_classes: ArrayLike | None = None,
    ) -> NullModel:
        bucket = n_bucket(n)
        with self._lock:
            model = self._models.get((key, bucket))
        if model is None:
            model = calibrate(
                reference, bin_edges, bucket, predicted_classes=predicted_classes,
                draws=self._draws, seed=self._seed,
            )
            logger.info("calibrated thresholds", extra={"release": key, "n_bucket": bucket})
            with self._lock:
                self._models[(key, bucket)] = model
        return model
