"""Release gates for `/metrics` (a collector read at scrape time).

    edgeops_release_accuracy_gate{model,version}   the minimum accuracy the release passed

The gate is the threshold of the pipeline run that published the release: its
`fleet_accuracy_min` gate, else its `heldout_accuracy_min` gate. A release published by hand,
or by a run with neither gate, has none. Alerts compare `edgeops_estimated_accuracy` with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from server.db.tables import PipelineRun, Release

__all__ = ["ACCURACY_GATES", "ReleaseGateCollector", "accuracy_gate"]

logger = logging.getLogger(__name__)

ACCURACY_GATES = ("fleet_accuracy_min", "heldout_accuracy_min")  # first found wins


def accuracy_gate(results: Mapping[str, Any]) -> float | None:
    """The accuracy threshold in a pipeline run's recorded gates (pure)."""
    thresholds = {
        g.get("name"): g.get("threshold")
        for g in results.get("gates", [])
        if isinstance(g, Mapping)
    }
    for name in ACCURACY_GATES:
        value = thresholds.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


class ReleaseGateCollector:
    def __init__(self, session_factory: sessionmaker) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        try:
            with self._session_factory() as session:
                runs = session.execute(
                    select(PipelineRun.model, PipelineRun.candidate_version, PipelineRun.results)
                    .join(Release, Release.target_path == PipelineRun.candidate_target)
                    .where(Release.withdrawn_at.is_(None))
                    .order_by(PipelineRun.id)
                ).all()
        except SQLAlchemyError:
            logger.exception("release gate metrics: database read failed")
            return
        gates: dict[tuple[str, str], float] = {}
        for model, version, results in runs:  # a later run's gate replaces an earlier one
            gate = accuracy_gate(results or {})
            if gate is not None:
                gates[(model, str(version))] = gate
        family = GaugeMetricFamily(
            "edgeops_release_accuracy_gate",
            "Minimum accuracy the release's pipeline run gated it on.",
            labels=["model", "version"],
        )
        for labels, gate in sorted(gates.items()):
            family.add_metric(list(labels), gate)
        yield family
