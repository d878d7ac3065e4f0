"""One module-level router per resource; `ROUTERS` is the ordered list the app mounts.

    tuf            /tuf/metadata, /tuf/targets             (no token: TUF verifies)
    models         /api/models
    model_cards    /api/models/{m}/versions/{v}/card, /api/releases/card
    releases       /api/releases, /api/tuf/timestamp
    devices        /api/devices, /api/groups               (inventory, labels, history)
    deployments    /api/deployments
    ingest         /api/ingest/stats
    enroll         /api/enroll
    rollouts       /api/rollouts
    monitor        /api/monitor/cohorts|windows|scores|events
    pipeline       /api/pipeline/runs                      (continuous-delivery runs)
    tokens         /api/tokens
    audit          /api/audit
    training_runs  /api/training-runs
    lineage        /api/lineage/devices/{id}?at=, /api/lineage/releases/{name}
    metrics        /metrics                                (Prometheus, no token)

Services come from `app.state` through the aliases in server.api.deps; so does the one
auth idiom (ViewerDep / OperatorDep / AdminDep).
"""

from __future__ import annotations

from fastapi import APIRouter

from server.api.routes import (
    audit,
    deployments,
    devices,
    enroll,
    ingest,
    lineage,
    metrics,
    model_cards,
    models,
    monitor,
    pipeline,
    releases,
    rollouts,
    tokens,
    training_runs,
    tuf,
)

__all__ = ["ROUTERS"]

ROUTERS: list[APIRouter] = [
    tuf.router,
    models.router,
    model_cards.router,
    releases.router,
    devices.router,
    deployments.router,
    ingest.router,
    enroll.router,
    rollouts.router,
    monitor.router,
    pipeline.router,
    tokens.router,
    audit.router,
    training_runs.router,
    lineage.router,
    metrics.router,
]
