"""Monitor metrics for `/metrics` (a collector read at scrape time).

    edgeops_drift_score{model,version,cohort,statistic}   latest window, max over features
    edgeops_estimated_accuracy{model,version,cohort}      latest window, label-free estimate
    edgeops_realised_accuracy{model,version,cohort}       latest window with feedback
    edgeops_drift_events_total{kind}                      monitor events stored
    edgeops_monitor_windows_scored_total                  windows scored by this process

No per-device labels: `cohort` is a device group or `fleet`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from server.db.tables import MonitorEventRecord
from server.monitoring import store
from server.monitoring.runner import FLEET_GROUP, MonitorStats

__all__ = ["MonitorCollector"]

logger = logging.getLogger(__name__)


def _model_version(release: str) -> tuple[str, str]:
    parts = release.split("/")
    return (parts[0], parts[1]) if len(parts) >= 2 else (release, "")


class MonitorCollector:
    def __init__(self, session_factory: sessionmaker, stats: MonitorStats | None = None) -> None:
        self._session_factory = session_factory
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        drift = GaugeMetricFamily(
            "edgeops_drift_score", "Drift statistic of the latest window (max over features)",
            labels=["model", "version", "cohort", "statistic"],
        )
        estimated = GaugeMetricFamily(
            "edgeops_estimated_accuracy", "Label-free accuracy estimate of the latest window",
            labels=["model", "version", "cohort"],
        )
        realised = GaugeMetricFamily(
            "edgeops_realised_accuracy", "Accuracy on feedback labels of the latest window",
            labels=["model", "version", "cohort"],
        )
        events = CounterMetricFamily(
            "edgeops_drift_events", "Monitor events stored", labels=["kind"]
        )
        try:
            with self._session_factory() as session:
                rows = store.latest_windows(session, conclusive_only=True)
                for row in rows:
                    model, version = _model_version(row.release)
                    cohort = row.group_name or FLEET_GROUP
                    for stat, values in (row.scores.get("statistics") or {}).items():
                        finite = [v for v in values if v is not None]
                        if finite:
                            drift.add_metric([model, version, cohort, stat], max(finite))
                    if row.prior_shift is not None:
                        drift.add_metric([model, version, cohort, "prior_shift"], row.prior_shift)
                    if row.estimated_accuracy is not None:
                        estimated.add_metric([model, version, cohort], row.estimated_accuracy)
                    if row.realised_accuracy is not None:
                        realised.add_metric([model, version, cohort], row.realised_accuracy)
                counts = session.execute(
                    select(MonitorEventRecord.kind, func.count()).group_by(MonitorEventRecord.kind)
                ).all()
                for kind, count in counts:
                    events.add_metric([kind], count)
        except SQLAlchemyError:
            logger.exception("monitor metrics: database read failed")
            return
        yield from (drift, estimated, realised, events)
        if self._stats is not None:
            scored = CounterMetricFamily(
                "edgeops_monitor_windows_scored", "Windows scored by this process"
            )
            scored.add_metric([], self._stats.windows_scored)
            yield scored
