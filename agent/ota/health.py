"""Model health: a cheap sampler on the predict path and a pure judge of the health window.

`HealthSampler.record` keeps one small tuple per predict call in a bounded deque (no
numpy work beyond one max over the probabilities), so the previous model's recent
behaviour is always at hand as the baseline when an update switches.

`judge(baseline, window, policy, elapsed_s)` decides, from statistics and the time alone,
whether the health window should keep waiting, commit, or roll back, and says why.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from edgeops.schemas import HealthPolicy

__all__ = ["HealthSampler", "HealthStats", "Verdict", "judge", "resolve_policy"]

DEFAULT_CAPACITY = 2048
KEEP_PROBABILITIES_UP_TO = 16  # rows; bounds the sampler at ~2048 x 16 x classes floats


@dataclass(frozen=True)
class HealthStats:
    """Error rate, p95 latency and mean top-class confidence over some predictions."""

    calls: int
    errors: int
    p95_latency_ms: float | None
    mean_confidence: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HealthStats:
        return cls(
            calls=int(raw["calls"]),
            errors=int(raw["errors"]),
            p95_latency_ms=None if raw.get("p95_latency_ms") is None else float(raw["p95_latency_ms"]),
            mean_confidence=None if raw.get("mean_confidence") is None else float(raw["mean_confidence"]),
        )

    def describe(self) -> str:
        p95 = "-" if self.p95_latency_ms is None else f"{self.p95_latency_ms:.2f} ms"
        conf = "-" if self.mean_confidence is None else f"{self.mean_confidence:.3f}"
        return f"{self.calls} calls, error rate {self.error_rate:.3f}, p95 {p95}, confidence {conf}"


def _reduce(probabilities: np.ndarray) -> tuple[int, float]:
    return len(probabilities), float(probabilities.max(axis=1).sum())


class HealthSampler:
    """Recent predict calls of the model being served. Thread-safe; reset on every switch."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        # (latency_s, probabilities or (samples, confidence_sum)) for successes; None marks
        # an error. Small batches keep their probabilities and are reduced in stats(), off
        # the predict path (a numpy reduction costs µs); large ones are reduced at once so
        # the window's memory stays bounded.
        self._calls: deque[tuple[float, Any] | None] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, latency_s: float, probabilities: np.ndarray) -> None:
        kept: np.ndarray | tuple[int, float] = probabilities
        if len(probabilities) > KEEP_PROBABILITIES_UP_TO:
            kept = _reduce(probabilities)
        self._calls.append((latency_s, kept))  # deque.append is atomic

    def record_error(self) -> None:
        self._calls.append(None)

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def stats(self) -> HealthStats:
        with self._lock:
            calls = list(self._calls)
        good = [c for c in calls if c is not None]
        latencies = sorted(c[0] for c in good)
        reduced = [c[1] if isinstance(c[1], tuple) else _reduce(c[1]) for c in good]
        samples = sum(n for n, _ in reduced)
        p95 = None
        if latencies:
            p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)] * 1e3
        return HealthStats(
            calls=len(calls),
            errors=len(calls) - len(good),
            p95_latency_ms=p95,
            mean_confidence=(sum(s for _, s in reduced) / samples) if samples else None,
        )


@dataclass(frozen=True)
class Verdict:
    decision: Literal["wait", "healthy", "regressed"]
    reason: str | None = None


def resolve_policy(
    release_policy: HealthPolicy | None,
    window_s: float | None = None,
    min_samples: int | None = None,
) -> HealthPolicy:
    """The release's policy (or the defaults) with the agent's overrides applied."""
    policy = release_policy or HealthPolicy()
    updates: dict[str, Any] = {}
    if window_s is not None:
        updates["window_s"] = window_s
        if policy.max_window_s is not None and policy.max_window_s < window_s:
            updates["max_window_s"] = None
    if min_samples is not None:
        updates["min_samples"] = min_samples
    return policy.model_copy(update=updates) if updates else policy


def judge(
    baseline: HealthStats | None, window: HealthStats, policy: HealthPolicy, elapsed_s: float
) -> Verdict:
    """Wait, commit or roll back the model whose health window produced `window`."""
    enough = window.calls >= policy.min_samples
    if elapsed_s < policy.window_s or (not enough and elapsed_s < policy.deadline_s):
        return Verdict("wait")
    if window.calls == 0:
        return Verdict("healthy", "no traffic in the health window: committed on the smoke test")
    regressions: list[str] = []
    base_error = baseline.error_rate if baseline and baseline.calls else 0.0
    if window.error_rate - base_error > policy.max_error_rate_increase:
        regressions.append(
            f"error rate {window.error_rate:.3f} vs {base_error:.3f} before "
            f"(allowed +{policy.max_error_rate_increase:g})"
        )
    if baseline is not None and baseline.p95_latency_ms is not None and window.p95_latency_ms is not None:
        limit = max(
            baseline.p95_latency_ms * policy.max_p95_latency_ratio,
            baseline.p95_latency_ms + policy.latency_slack_ms,
        )
        if window.p95_latency_ms > limit:
            regressions.append(
                f"p95 latency {window.p95_latency_ms:.2f} ms vs {baseline.p95_latency_ms:.2f} ms "
                f"before (allowed x{policy.max_p95_latency_ratio:g})"
            )
    if baseline is not None and baseline.mean_confidence is not None and window.mean_confidence is not None:
        drop = baseline.mean_confidence - window.mean_confidence
        if drop > policy.max_confidence_drop:
            regressions.append(
                f"mean confidence {window.mean_confidence:.3f} vs {baseline.mean_confidence:.3f} "
                f"before (allowed -{policy.max_confidence_drop:g})"
            )
    if regressions:
        return Verdict("regressed", "health window regression: " + "; ".join(regressions))
    note = "" if enough else f" (only {window.calls} of {policy.min_samples} samples)"
    return Verdict("healthy", None if enough else f"health window passed{note}")
