"""Prometheus metrics at `/metrics`, one `CollectorRegistry` per app (never the global one:
several apps live in one test process).

    build_app ─► registry = create_registry()  (app.state.metrics_registry)
                 register(registry, IngestCollector(ingest))
                 register(registry, FleetCollector(session_factory))
                 GET /metrics serves app.state.metrics_registry (MetricsRegistryDep)

Adding metrics from another part of the server: write a collector (an object with
`collect()` yielding metric families, read from your component's own snapshot at scrape
time) and `register(app.state.metrics_registry, collector)`, or create prometheus_client
`Counter`/`Gauge` objects with `registry=app.state.metrics_registry`.

Naming follows Prometheus conventions: `edgeops_<subsystem>_<name>_<unit>`, counters end
in `_total`, base units (seconds, bytes), and no per-device labels (label values come from
small fixed sets: message kinds, outcomes, rejection reasons, device states).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from server.api.deps import MetricsRegistryDep
from server.fleet.ingest.stats import IngestStats

__all__ = [
    "FleetCollector",
    "IngestCollector",
    "create_registry",
    "register",
    "router",
]

KINDS = ("status", "telemetry", "unknown")
OUTCOMES = ("stored", "duplicate", "rejected")

router = APIRouter(tags=["metrics"])


class Collector(Protocol):
    def collect(self) -> Iterator[Metric]: ...


class _StatsSource(Protocol):
    def stats(self) -> IngestStats: ...


def create_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def register(registry: CollectorRegistry, collector: Collector) -> None:
    registry.register(collector)


def ingest_metrics(stats: IngestStats) -> list[Metric]:
    """Metric families for one ingest snapshot (pure)."""
    messages = CounterMetricFamily(
        "edgeops_ingest_messages", "MQTT messages handled by ingest, by kind and outcome.",
        labels=["kind", "outcome"],
    )
    for kind in KINDS:
        for outcome in OUTCOMES:
            messages.add_metric([kind, outcome], stats.outcomes.get((kind, outcome), 0))
    rejected = CounterMetricFamily(
        "edgeops_ingest_rejected_messages", "Messages ingest rejected, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(stats.rejected.items()):
        rejected.add_metric([reason], count)
    received = CounterMetricFamily(
        "edgeops_ingest_received_messages", "MQTT messages taken from the broker.",
        value=stats.received,
    )
    batches = CounterMetricFamily(
        "edgeops_ingest_batches", "Database transactions committed by ingest.",
        value=stats.batches,
    )
    retries = CounterMetricFamily(
        "edgeops_ingest_database_retries", "Ingest writes retried because the database failed.",
        value=stats.database_retries,
    )
    queued = GaugeMetricFamily(
        "edgeops_ingest_queued_messages", "Messages received and not yet written.",
        value=stats.queued,
    )
    connected = GaugeMetricFamily(
        "edgeops_ingest_broker_connected", "1 while ingest is connected to the MQTT broker.",
        value=1 if stats.connected else 0,
    )
    return [messages, rejected, received, batches, retries, queued, connected]


class IngestCollector:
    """Reads an ingest worker's counters at scrape time."""

    def __init__(self, ingest: _StatsSource) -> None:
        self._ingest = ingest

    def collect(self) -> Iterator[Metric]:
        yield from ingest_metrics(self._ingest.stats())


class FleetCollector:
    """Devices by presence and state, counted in the database at scrape time."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        from server.db.tables import Device

        devices = GaugeMetricFamily(
            "edgeops_fleet_devices", "Known devices, by presence and reported state.",
            labels=["online", "state"],
        )
        try:
            with self._session_factory() as session:
                rows: list[Any] = list(
                    session.execute(
                        select(Device.online, Device.state, func.count()).group_by(
                            Device.online, Device.state
                        )
                    )
                )
        except SQLAlchemyError:
            return  # no fleet numbers this scrape; the database error is logged elsewhere
        for online, state, count in rows:
            devices.add_metric(["true" if online else "false", state or "unknown"], count)
        yield devices


@router.get("/metrics", include_in_schema=False)
def metrics(registry: MetricsRegistryDep) -> Response:
    """The app's registry in the Prometheus text format (no token: scrapers read it)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
