"""Assemble a running server from its settings: the one place that wires the parts.

    build_app(settings, extra_routers=(), lifespan_hooks=()) -> FastAPI

opens the database (migrating it), the artifact store and the TUF repository, and runs
background work for the app's lifetime: the TUF refresher that re-signs
timestamp/snapshot/targets before they expire, MQTT ingest and the command publisher.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import sessionmaker

from server import console
from server.api.body_limits import BodyLimitMiddleware
from server.api.routes import ROUTERS
from server.api.routes.metrics import FleetCollector, IngestCollector, create_registry
from server.api.routes.metrics import register as register_metrics
from server.app.fleet_lifespan import fleet_lifespan
from server.app.http_app import create_app
from server.background.periodic import LifespanHook, periodic
from server.config.settings import ServerSettings
from server.db.engine import open_database
from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest
from server.governance.audit_chain import anchor_hook
from server.identity.enrollment import Enrollment
from server.monitoring import (
    MonitorCollector,
    MonitorRunner,
    RepositoryReferences,
    config_from_settings,
)
from server.pipeline.metrics import ReleaseGateCollector
from server.pipeline.runner import PipelineRunner, pipeline_lifespan
from server.registry.artifact_store import ArtifactStore
from server.rollouts.metrics import RolloutCollector
from server.rollouts.runner import RolloutRunner, rollout_lifespan
from server.trust.metrics import TufExpiryCollector
from server.trust.repository import TufRepository

__all__ = ["LifespanHook", "build_app", "tuf_refresher"]

logger = logging.getLogger(__name__)

TUF_REFRESH_INTERVAL_S = 600.0


def tuf_refresher(
    repository: TufRepository, interval_s: float = TUF_REFRESH_INTERVAL_S
) -> LifespanHook:
    """A lifespan hook re-signing expiring TUF metadata at start and every `interval_s`."""
    return periodic("tuf-refresher", repository.refresh_expiring, interval_s, run_at_start=True)


def _compose(hooks: Sequence[LifespanHook]) -> LifespanHook:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook(app))
            yield

    return lifespan


def _monitor(
    settings: ServerSettings, session_factory: sessionmaker, repository: TufRepository
) -> MonitorRunner | None:
    """The fleet monitor, unless the settings turn it off."""
    if not settings.monitor_enabled:
        return None
    return MonitorRunner(session_factory, RepositoryReferences(repository),
                         config_from_settings(settings), holder=settings.lease_holder)


def build_app(
    settings: ServerSettings,
    extra_routers: Sequence[APIRouter] = (),
    lifespan_hooks: Sequence[LifespanHook] = (),
    *,
    with_fleet: bool = True,
) -> FastAPI:
    """The complete server app for `settings`: database migrated, TUF refresher running and,
    `with_fleet`, MQTT ingest and the command publisher connected to the broker."""
    session_factory = open_database(settings.resolved_database_url)
    artifact_store = ArtifactStore(settings.artifacts_dir)
    repository = TufRepository(settings.tuf_dir)
    metrics_registry = create_registry()  # per app; others register on app.state.metrics_registry
    routers = [*extra_routers, *ROUTERS, console.router]
    publisher: CommandPublisher | None = None
    ingest: Ingest | None = None
    runner: RolloutRunner | None = None
    hooks = [tuf_refresher(repository)]
    register_metrics(metrics_registry, FleetCollector(session_factory))
    register_metrics(metrics_registry, ReleaseGateCollector(session_factory))
    register_metrics(metrics_registry, TufExpiryCollector(repository))
    if with_fleet:
        publisher = CommandPublisher(settings)
        ingest = Ingest(settings, session_factory)
        hooks.append(fleet_lifespan(publisher, ingest))
        register_metrics(metrics_registry, IngestCollector(ingest))
        runner = RolloutRunner(session_factory, publisher)
        hooks.append(rollout_lifespan(runner))  # after fleet_lifespan: the publisher runs
    monitor = _monitor(settings, session_factory, repository) if with_fleet else None
    if monitor is not None:
        hooks.append(periodic("fleet-monitor", monitor.tick, settings.monitor_interval_s))
    if with_fleet and settings.pipeline_enabled:
        hooks.append(pipeline_lifespan(PipelineRunner(settings, session_factory),
                                       settings.pipeline_interval_s))
    monitor_stats = monitor.stats if monitor else None
    register_metrics(metrics_registry, MonitorCollector(session_factory, monitor_stats))
    register_metrics(
        metrics_registry, RolloutCollector(session_factory, runner.stats if runner else None)
    )
    hooks.append(anchor_hook(settings, session_factory))  # sign the audit chain's head
    hooks.extend(lifespan_hooks)
    app = create_app(settings, session_factory, artifact_store, routers, lifespan=_compose(hooks))
    app.add_middleware(BodyLimitMiddleware)  # outermost: refuses bodies before anything reads them
    # The services the routers take through server.api.deps (None: not run by this process).
    app.state.metrics_registry = metrics_registry
    app.state.enrollment = Enrollment(settings, session_factory)
    app.state.publisher = publisher
    app.state.ingest = ingest
    return app
