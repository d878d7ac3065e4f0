"""Rollout and fleet-version metrics for `/metrics` (a collector read at scrape time).

    edgeops_rollouts{status}                     rollouts by status (gauge)
    edgeops_rollout_devices{phase}               devices of active rollouts by phase (gauge)
    edgeops_fleet_release_devices{release}       devices by the release they run (gauge)
    edgeops_rollout_commands_total{kind}         update/rollback commands published
    edgeops_rollout_command_failures_total       commands the broker did not confirm
    edgeops_rollouts_finished_total{status}      rollouts completed or aborted (this process)
    edgeops_rollout_ticks_total, edgeops_rollout_tick_errors_total
    edgeops_rollout_tick_duration_seconds        duration of the last controller tick

No per-device or per-rollout labels: label values come from small fixed sets (statuses,
phases) or the release list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from server.db.tables import Device, Rollout, RolloutDevice
from server.rollouts.controller import ACTIVE_STATUSES, TRANSITIONS
from server.rollouts.runner import RunnerStats

__all__ = ["RolloutCollector"]

logger = logging.getLogger(__name__)


class RolloutCollector:
    def __init__(self, session_factory: sessionmaker, stats: RunnerStats | None = None) -> None:
        self._session_factory = session_factory
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._database_metrics()
        stats = self._stats
        if stats is None:
            return
        commands = CounterMetricFamily(
            "edgeops_rollout_commands", "Rollout commands published, by kind.", labels=["kind"]
        )
        for kind, count in sorted(stats.commands_sent.items()):
            commands.add_metric([kind], count)
        yield commands
        yield CounterMetricFamily(
            "edgeops_rollout_command_failures",
            "Rollout commands the broker did not confirm (retried).",
            value=stats.commands_failed,
        )
        finished = CounterMetricFamily(
            "edgeops_rollouts_finished", "Rollouts finished by this process, by outcome.",
            labels=["status"],
        )
        for status, count in sorted(stats.rollouts_finished.items()):
            finished.add_metric([status], count)
        yield finished
        yield CounterMetricFamily("edgeops_rollout_ticks", "Controller ticks.", value=stats.ticks)
        yield CounterMetricFamily(
            "edgeops_rollout_tick_errors", "Controller ticks that failed.", value=stats.tick_errors
        )
        yield GaugeMetricFamily(
            "edgeops_rollout_tick_duration_seconds", "Duration of the last controller tick.",
            value=stats.last_tick_s,
        )

    def _database_metrics(self) -> Iterator[Metric]:
        try:
            with self._session_factory() as session:
                by_status = dict(
                    session.execute(select(Rollout.status, func.count()).group_by(Rollout.status))
                    .all()
                )
                by_phase = dict(
                    session.execute(
                        select(RolloutDevice.phase, func.count())
                        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                        .where(Rollout.status.in_(sorted(ACTIVE_STATUSES)))
                        .group_by(RolloutDevice.phase)
                    ).all()
                )
                by_release = session.execute(
                    select(Device.release, func.count()).group_by(Device.release)
                ).all()
        except SQLAlchemyError:
            logger.exception("rollout metrics: database unavailable")
            return
        rollouts = GaugeMetricFamily("edgeops_rollouts", "Rollouts by status.", labels=["status"])
        for status in TRANSITIONS:
            rollouts.add_metric([status], by_status.get(status, 0))
        yield rollouts
        phases = GaugeMetricFamily(
            "edgeops_rollout_devices", "Devices of active rollouts, by phase.", labels=["phase"]
        )
        for phase, count in sorted(by_phase.items()):
            phases.add_metric([phase], count)
        yield phases
        releases = GaugeMetricFamily(
            "edgeops_fleet_release_devices", "Devices by the release they run.",
            labels=["release"],
        )
        for release, count in sorted(by_release, key=lambda r: r[0] or ""):
            releases.add_metric([release or "none"], count)
        yield releases
