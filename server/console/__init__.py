"""The web console: server-rendered pages with a little JavaScript, no external assets.

`router` (prefix /console) includes one router per resource:

    auth       /console/login, /console/logout; ConsoleUserDep / ConsoleOperatorDep
    overview   /console/
    rollouts   /console/rollouts[/{id}[/progress|/pause|/resume|/abort]]
    pipeline   /console/pipeline[/{id}[/approve]] (continuous-delivery runs, timelines)
    devices    /console/devices[/{id}]
    lineage    /console/lineage/devices/{id}[?at=], /console/lineage/releases/{target}
    monitor    /console/monitor[/{model}] (drift, accuracy, volume charts per cohort)
    model_card /console/models/{model}/{version}/card (a release's model card)
    static     /console/static/{console.js,console.css}
    render     HTML helpers (escaping, tables, bars, the start-rollout form)
    forms      bounded url-encoded form bodies (FormDep)

Login exchanges an API token for a server-side session (its secret in an HttpOnly,
SameSite=Strict cookie); every state-changing request must come from the console's own
origin and carry the session's CSRF token (server.console.auth). Viewers see the fleet and
rollouts, operators can also start, pause, resume and abort rollouts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.console import (
    auth,
    devices,
    lineage,
    model_card,
    monitor,
    overview,
    pipeline,
    rollouts,
    static,
)

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False,
                   dependencies=[Depends(auth.same_origin)])
for _part in (static, auth, overview, rollouts, pipeline, devices, lineage, monitor,
              model_card):
    router.include_router(_part.router)
