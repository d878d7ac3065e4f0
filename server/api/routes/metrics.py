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

A `release` label names a release the registry knows, or "none", or "unknown": `/metrics`
collapses any other value (a version a device reported, which nobody published) into
"unknown" as it serves (`KnownReleases`), so a device cannot mint label values. With the
`metrics_token` setting, `/metrics` needs a viewer token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from server.api.deps import MetricsRegistryDep, SessionFactoryDep, SettingsDep, require_role
from server.fleet.ingest.stats import IngestStats

__all__ = [
    "FleetCollector",
    "IngestCollector",
    "KnownReleases",
    "create_registry",
    "register",
    "router",
]

KINDS = ("status", "telemetry", "unknown")
RELEASE_LABEL = "release"
UNLISTED_RELEASES = frozenset({"none", "unknown"})
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


class KnownReleases:
    """`source`'s metrics with every `release` label the registry does not know replaced by
    "unknown" (samples that then share their labels are added up)."""

    def __init__(self, source: CollectorRegistry, known: set[str]) -> None:
        self._source = source
        self._known = known | UNLISTED_RELEASES

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            if not any(RELEASE_LABEL in s.labels for s in metric.samples):
                yield metric
                continue
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
            for sample in metric.samples:
                labels = dict(sample.labels)
                if labels.get(RELEASE_LABEL, "none") not in self._known:
                    labels[RELEASE_LABEL] = "unknown"
                key = (sample.name, tuple(sorted(labels.items())))
                seen = merged.get(key)
                value = sample.value + (seen.value if seen else 0.0)
                merged[key] = sample._replace(labels=labels, value=value)
            metric.samples = list(merged.values())
            yield metric


def _known_releases(session_factory: Callable[[], Session]) -> set[str]:
    from server.db.tables import Release

    try:
        with session_factory() as session:
            return set(session.scalars(select(Release.target_path)))
    except SQLAlchemyError:
        return set()  # every release label reads "unknown" this scrape


def _metrics_reader(request: Request, settings: SettingsDep,
                    authorization: Annotated[str | None, Header()] = None) -> None:
    if settings.metrics_token:
        require_role(request, authorization, "viewer")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_metrics_reader)])
def metrics(registry: MetricsRegistryDep, session_factory: SessionFactoryDep) -> Response:
    """The app's registry in the Prometheus text format (a token only with `metrics_token`)."""
    known = KnownReleases(registry, _known_releases(session_factory))
    return Response(generate_latest(known), media_type=CONTENT_TYPE_LATEST)
