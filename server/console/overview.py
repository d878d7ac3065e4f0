"""`/console/`: the fleet overview (devices online, versions, groups, recent rollouts)."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from server.api.deps import SessionFactoryDep
from server.auth.tokens import has_role
from server.console.auth import ConsoleUserDep
from server.console.model_card import card_link
from server.console.render import bar, e, html, page, rollout_table, start_form, table
from server.db.tables import DeviceLabel, Release
from server.fleet import inventory
from server.rollouts import store
from server.rollouts.controller import ACTIVE_STATUSES

__all__ = ["router"]

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview(user: ConsoleUserDep, session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        devices = inventory.list_devices(session)
        labels = {x.device_id: x for x in session.scalars(select(DeviceLabel))}
        rollouts = store.list_rollouts(session, limit=10)
        counts = store.phase_counts(session, [r.id for r in rollouts])
        releases = [r.target_path for r in session.scalars(
            select(Release).order_by(Release.id.desc()))]
    online = sum(1 for d in devices if d.online)
    versions = Counter(d.release or "(none)" for d in devices)
    groups = Counter((labels[d.device_id].group_name if d.device_id in labels else "default")
                     for d in devices)
    cards = "".join(
        f'<div class="card"><b id="{ident}">{value}</b>{e(label)}</div>'
        for ident, value, label in (
            ("devices-total", len(devices), "devices"),
            ("devices-online", online, "online"),
            ("devices-offline", len(devices) - online, "offline"),
            ("rollouts-active", sum(1 for r in rollouts if r.status in ACTIVE_STATUSES),
             "active rollouts"),
        )
    )
    version_rows = [
        (card_link(release), str(n), bar(n, 0, len(devices)))
        for release, n in versions.most_common()
    ]
    group_rows = [(e(g), str(n)) for g, n in sorted(groups.items())]
    body = (
        f'<div class="cards">{cards}</div>'
        "<h2>Versions across the fleet</h2>"
        + table(["release", "devices", "share"], version_rows, "versions")
        + "<h2>Groups</h2>" + table(["group", "devices"], group_rows, "groups")
        + "<h2>Recent rollouts</h2>" + rollout_table(rollouts, counts)
        + (start_form(releases, sorted(groups), user.csrf) if has_role(user.role, "operator") else "")
    )
    return html(page("Fleet overview", body, user))
