"""A window of inference statistics, turned into a TelemetryBatch on flush.

Pure apart from a lock (predictions may come from the HTTP threads and the Python API
at once). Recording is cheap: it keeps references to the batch's inputs and outputs;
the histograms and summaries are computed in bulk by `fold()` (the daemon's telemetry
thread calls it every second) or at flush, so the prediction hot path does almost nothing.
Only when `max_pending` samples pile up does `record` fold on the caller's thread.
Raw inputs never leave this object: only counts and histograms do.

Batches are telemetry schema 2: feature histograms with underflow and overflow bins, a
(predicted class x confidence bin) count, and the confusion count of the predictions the
application labelled (`record_feedback`). `WindowPrivacy` optionally suppresses the sketches
of small windows and adds Laplace noise to the counts (see `agent.telemetry.privacy`).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import numpy as np

from agent.telemetry.privacy import WindowPrivacy, protect
from edgeops.messages import (
    CONFIDENCE_BINS,
    ConfidenceSummary,
    LatencySummary,
    TelemetryBatch,
)
from edgeops.schemas import ReleaseInfo
from edgeops.sketches import confidence_bins, feature_histograms_v2

__all__ = ["CONFIDENCE_BINS", "TelemetryWindow", "WindowPrivacy", "WindowRelease"]

LATENCY_PERCENTILES = (50.0, 95.0, 99.0)


def _percentiles(values: np.ndarray, percentiles: tuple[float, ...]) -> np.ndarray:
    """`np.percentile(values, percentiles)` (its default, linear interpolation) without
    calling it: np.percentile imports numpy.ma (about 1 MB of the running agent's RSS)."""
    ordered = np.sort(values)
    positions = np.asarray(percentiles) / 100.0 * (len(ordered) - 1)
    return np.interp(positions, np.arange(len(ordered)), ordered)


@dataclass(frozen=True)
class WindowRelease:
    """What the window's histograms are shaped by."""

    model: str | None = None
    version: int | None = None
    num_classes: int = 0
    bin_edges: tuple[float, ...] = ()

    @classmethod
    def of(cls, release: ReleaseInfo | None) -> WindowRelease:
        if release is None:
            return cls()
        return cls(
            model=release.model,
            version=release.version,
            num_classes=release.num_classes,
            bin_edges=tuple(release.input.feature_bin_edges),
        )


class TelemetryWindow:
    """Accumulates predictions of one release over one time window."""

    def __init__(
        self,
        device_id: str,
        release: WindowRelease,
        now: float,
        *,
        max_pending: int = 65536,
        max_latency_samples: int = 65536,
        seed: int | None = None,
        privacy: WindowPrivacy | None = None,
    ) -> None:
        self._device_id = device_id
        self._privacy = privacy or WindowPrivacy()
        self._noise = np.random.default_rng(seed)
        self._max_pending = max_pending
        self._max_latencies = max_latency_samples
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._reset(release, now)

    def _reset(self, release: WindowRelease, now: float) -> None:
        self._release = release
        self._start = now
        self._count = 0
        self._errors = 0
        self._latencies_s: list[float] = []
        self._latency_seen = 0
        self._pending_inputs: list[np.ndarray] = []
        self._pending_probs: list[np.ndarray] = []
        self._pending_n = 0
        self._conf_sum = 0.0
        self._conf_min = 1.0
        self._conf_hist = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        self._classes = np.zeros(release.num_classes, dtype=np.int64)
        self._class_conf = np.zeros((release.num_classes, CONFIDENCE_BINS), dtype=np.int64)
        self._confusion = np.zeros((release.num_classes, release.num_classes), dtype=np.int64)
        self._feedback = 0
        self._feedback_sent = False
        self._features: np.ndarray | None = None

    # Recording (hot path) ----------------------------------------------------------

    def record(self, latency_s: float, inputs: np.ndarray, probabilities: np.ndarray) -> None:
        """One predict call: `inputs` (n, ...) and its `probabilities` (n, classes)."""
        with self._lock:
            n = len(inputs)
            self._count += n
            self._latency_seen += 1
            if len(self._latencies_s) < self._max_latencies:
                self._latencies_s.append(latency_s)
            else:  # reservoir sampling keeps an unbiased sample of the window
                slot = self._random.randrange(self._latency_seen)
                if slot < self._max_latencies:
                    self._latencies_s[slot] = latency_s
            self._pending_inputs.append(inputs)
            self._pending_probs.append(probabilities)
            self._pending_n += n
            if self._pending_n >= self._max_pending:  # memory guard
                self._fold()

    def record_error(self, count: int = 1) -> None:
        with self._lock:
            self._errors += count

    def record_feedback(self, true_class: int, predicted_class: int) -> None:
        """The application labelled an earlier prediction: one confusion count.

        Labels of a prediction from an earlier window count in this one (the window in
        which the label arrived). Classes outside the release's are refused by the caller.
        """
        with self._lock:
            size = max(true_class, predicted_class) + 1
            if size > self._confusion.shape[0]:
                grown = np.zeros((size, size), dtype=np.int64)
                grown[: self._confusion.shape[0], : self._confusion.shape[1]] = self._confusion
                self._confusion = grown
            self._confusion[true_class, predicted_class] += 1
            self._feedback += 1

    # Bulk work ---------------------------------------------------------------------

    def fold(self) -> None:
        """Fold pending samples into the aggregates now (off the prediction path)."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        """Fold pending samples into the aggregates. Caller holds the lock."""
        if not self._pending_n:
            return
        probs = np.concatenate(self._pending_probs).astype(np.float64, copy=False)
        inputs = np.concatenate(self._pending_inputs)
        self._pending_inputs, self._pending_probs, self._pending_n = [], [], 0
        confidence = probs.max(axis=1)
        self._conf_sum += float(confidence.sum())
        self._conf_min = min(self._conf_min, float(confidence.min()))
        bins = confidence_bins(confidence)
        self._conf_hist += np.bincount(bins, minlength=CONFIDENCE_BINS)
        predicted = probs.argmax(axis=1)
        classes = np.bincount(predicted, minlength=self._classes.size)
        if classes.size > self._classes.size:  # a model with more outputs than announced
            classes[: self._classes.size] += self._classes
            grown = np.zeros((classes.size, CONFIDENCE_BINS), dtype=np.int64)
            grown[: self._class_conf.shape[0]] = self._class_conf
            self._class_conf = grown
            self._classes = classes
        else:
            self._classes += classes
        cells = np.bincount(predicted * CONFIDENCE_BINS + bins, minlength=self._class_conf.size)
        self._class_conf += cells.reshape(self._class_conf.shape)
        if len(self._release.bin_edges) >= 2:
            histograms = feature_histograms_v2(inputs, self._release.bin_edges)
            self._features = histograms if self._features is None else self._features + histograms

    def _summary(
        self, now: float, rss_mb: float | None, cpu_percent: float | None, **extra: object
    ) -> TelemetryBatch | None:
        self._fold()
        if not self._count and not self._errors:
            return None
        latency = None
        if self._latencies_s:
            ms = np.asarray(self._latencies_s) * 1000.0
            p50, p95, p99 = _percentiles(ms, LATENCY_PERCENTILES)
            latency = LatencySummary(
                p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), mean_ms=float(ms.mean())
            )
        num_classes = max(self._class_conf.shape[0], self._confusion.shape[0])
        # A window carries no more labels than predictions (the contract bounds them by
        # `count`); labels that arrive in a quieter window wait for the next one.
        self._feedback_sent = 0 < self._feedback <= self._count
        sketches = protect(
            self._privacy,
            self._count,
            {
                "feature_histograms": self._features,
                "class_confidence": _pad_rows(self._class_conf, num_classes)
                if self._count else None,
                "confusion": _pad_square(self._confusion, num_classes)
                if self._feedback_sent else None,
                "predicted_classes": self._classes if self._count else None,
                "confidence_histogram": self._conf_hist,
            },
            self._noise,
        )
        confidence = None
        if self._count:
            confidence = ConfidenceSummary(
                mean=min(1.0, max(0.0, self._conf_sum / self._count)),
                minimum=min(1.0, max(0.0, self._conf_min)),
                histogram=sketches.lists.get("confidence_histogram", [0] * CONFIDENCE_BINS),
            )
        return TelemetryBatch(
            device_id=self._device_id,  # schema: TELEMETRY_SCHEMA, the default
            model=self._release.model,
            version=self._release.version,
            window_start=self._start,
            window_end=max(now, self._start),
            count=self._count,
            errors=self._errors,
            latency=latency,
            confidence=confidence,
            predicted_classes=sketches.lists.get("predicted_classes", []),
            feature_histograms=sketches.lists.get("feature_histograms", []),
            class_confidence=sketches.lists.get("class_confidence"),
            confusion=sketches.lists.get("confusion"),
            feedback_count=self._feedback if self._feedback_sent else 0,
            privacy=sketches.info,
            rss_mb=rss_mb,
            cpu_percent=cpu_percent,
            **{k: v for k, v in extra.items() if v is not None},  # type: ignore[arg-type]
        )

    # Window boundaries -------------------------------------------------------------

    def flush(
        self,
        now: float,
        *,
        rss_mb: float | None = None,
        cpu_percent: float | None = None,
        outbox_dropped: int | None = None,
        message_id: str | None = None,
    ) -> TelemetryBatch | None:
        """Close the window at `now`: the batch, or None when nothing happened in it.

        `message_id` (default: a fresh uuid) lets a caller that replays a window after a
        crash give it the same id, so ingest stores it once.
        """
        with self._lock:
            batch = self._summary(
                now, rss_mb, cpu_percent, outbox_dropped=outbox_dropped, message_id=message_id
            )
            carried = None if self._feedback_sent else (self._confusion, self._feedback)
            self._reset(self._release, now)
            if carried is not None and carried[1]:
                self._confusion, self._feedback = carried
            return batch

    def rebind(self, release: WindowRelease, now: float) -> TelemetryBatch | None:
        """Close the window and start one for another release, atomically."""
        with self._lock:
            batch = self._summary(now, None, None)
            self._reset(release, now)
            return batch


def _pad_rows(counts: np.ndarray, rows: int) -> np.ndarray:
    if counts.shape[0] >= rows:
        return counts
    padded = np.zeros((rows, counts.shape[1]), dtype=np.int64)
    padded[: counts.shape[0]] = counts
    return padded


def _pad_square(counts: np.ndarray, size: int) -> np.ndarray:
    if counts.shape[0] >= size:
        return counts
    padded = np.zeros((size, size), dtype=np.int64)
    padded[: counts.shape[0], : counts.shape[1]] = counts
    return padded
