"""The I/O shell around the monitor's core: roll telemetry up into windows and score them.

    runner = MonitorRunner(session_factory, references, MonitorConfig(window_s=60))
    runner.tick()                        # score every window that has closed

(server.app.build runs `tick` periodically for the app's lifetime.)

Each tick is one transaction: take the single-monitor lease (PostgreSQL: an advisory lock
too), then for every closed time window after the watermark read its telemetry rows, merge
the sketches per cohort (release x device group, and the release across the fleet), score
them (`score_windows`), advance each cohort's confirmation state (`confirm`), store every
score and event, move the watermark, and prune telemetry already rolled up and older than
the retention age. Two replicas never score a window twice: the watermark moves in the same
transaction as the scores.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from server.config.settings import ServerSettings
from server.monitoring import store
from server.monitoring.detector import (
    CohortScore,
    CohortState,
    MonitorPolicy,
    Reference,
    confirm,
    score_windows,
)
from server.monitoring.merge import FLEET_GROUP, CohortWindow, cohort_name, merge_rows
from server.monitoring.thresholds import DEFAULT_DRAWS, CalibrationCache

__all__ = [
    "FLEET_GROUP",
    "MonitorConfig",
    "MonitorRunner",
    "MonitorStats",
    "ReferenceSource",
    "cohort_name",
    "config_from_settings",
]

logger = logging.getLogger(__name__)

ReferenceSource = Callable[[str], Reference | None]


@dataclass(frozen=True)
class MonitorConfig:
    """Window length, catch-up and retention of the monitor (from ServerSettings)."""

    window_s: float = 300.0
    grace_s: float = 5.0  # a window is scored this long after it closed (late batches)
    retention_s: float = 7 * 86400.0  # telemetry rows older than this are pruned
    lease_ttl_s: float = 60.0
    max_windows_per_tick: int = 100
    calibration_draws: int = DEFAULT_DRAWS
    policy: MonitorPolicy = field(default_factory=MonitorPolicy)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.grace_s < 0 or self.retention_s <= 0:
            raise ValueError("window_s and retention_s must be > 0, grace_s >= 0")


@dataclass
class MonitorStats:
    """Counters since this process started (exported at /metrics)."""

    ticks: int = 0
    tick_errors: int = 0
    windows_scored: int = 0
    rows_skipped: int = 0
    events: dict[str, int] = field(default_factory=dict)
    telemetry_pruned: int = 0
    last_tick_s: float = 0.0


class MonitorRunner:
    """Scores closed windows; one process at a time holds the lease."""

    def __init__(
        self,
        session_factory: sessionmaker,
        references: ReferenceSource,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._references = references
        self.config = config or MonitorConfig()
        self._clock = clock
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._cache = CalibrationCache(draws=self.config.calibration_draws)
        self.stats = MonitorStats()

    def tick(self) -> int:
        """Score every closed window after the watermark; return how many were scored."""
        started = time.perf_counter()
        now = self._clock()
        scored = 0
        try:
            with self._session_factory() as session, session.begin():
                lease = store.acquire_lease(session, self._holder, self.config.lease_ttl_s, now)
                if lease is None:
                    return 0
                window_s = self.config.window_s
                watermark = lease.watermark
                if watermark is None:
                    first = store.earliest_telemetry_end(session)
                    if first is None:
                        return 0
                    watermark = math.floor(first / window_s) * window_s
                while (
                    scored < self.config.max_windows_per_tick
                    and watermark + window_s <= now - self.config.grace_s
                ):
                    self._score_window(session, watermark, watermark + window_s)
                    watermark += window_s
                    scored += 1
                store.set_watermark(lease, watermark)
                pruned = store.prune_telemetry(session, now - self.config.retention_s, watermark)
                self.stats.telemetry_pruned += pruned
        except Exception:
            self.stats.tick_errors += 1
            raise
        finally:
            self.stats.ticks += 1
            self.stats.last_tick_s = time.perf_counter() - started
        self.stats.windows_scored += scored
        return scored

    def _score_window(self, session: Session, start: float, end: float) -> None:
        # References are looked up once per release and window: a lookup reads the signed
        # targets.
        merged, skipped = merge_rows(store.telemetry_rows(session, start, end), self._references)
        self.stats.rows_skipped += skipped
        if not merged:
            return
        items = []
        ordered = [cohort for _key, cohort in sorted(merged.items())]
        for cohort in ordered:
            release, ref = cohort.release, cohort.reference
            window = cohort.window()
            null = None
            if window.count >= self.config.policy.min_count:
                null = self._cache.get(
                    release, ref.feature_histograms, ref.bin_edges, window.count, ref.predicted_classes
                )
            items.append((window, ref, null))
        scores = score_windows(items, self.config.policy)
        cohorts = [w.cohort for w, _r, _n in items]
        states = store.load_states(session, cohorts)
        window_id = f"{start:.0f}-{end:.0f}"
        for (_window, ref, _null), score, cohort in zip(items, scores, ordered, strict=True):
            state, events = confirm(
                states.get(score.cohort, CohortState()), score, ref, self.config.policy, window_id
            )
            states[score.cohort] = state
            self._save(session, score, cohort, start, end)
            store.save_events(session, events, release=cohort.release, window_end=end)
            for event in events:
                self.stats.events[event.kind] = self.stats.events.get(event.kind, 0) + 1
                logger.info(
                    "monitor event %s", event.kind,
                    extra={"cohort": event.cohort, "release": cohort.release},
                )
        store.save_states(session, states)

    def _save(self, session: Session, score: CohortScore, cohort: CohortWindow, start: float, end: float) -> None:
        store.save_score(
            session,
            score,
            release=cohort.release,
            group_name=None if cohort.group == FLEET_GROUP else cohort.group,
            window_start=start,
            window_end=end,
            devices=len(cohort.devices),
        )


def config_from_settings(settings: ServerSettings) -> MonitorConfig:
    """The monitor's config from the server settings (entry points only)."""
    return MonitorConfig(
        window_s=settings.monitor_window_s,
        grace_s=settings.monitor_grace_s,
        retention_s=settings.monitor_retention_s,
        policy=MonitorPolicy(
            false_alarm_rate=settings.monitor_false_alarm_rate,
            min_count=settings.monitor_min_count,
        ),
    )
