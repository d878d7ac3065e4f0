"""HTML for the console pages. Every value is escaped; no external assets are referenced.

    page(title, body, user)     the whole document with the navigation (and logout form)
    table / bar / button_form   building blocks; rollout_table, start_form shared by pages
                                (every form takes the session's CSRF token: `csrf`)
    html(body, status_code)     the HTMLResponse a page returns
    recent_actions(session, ...)   who did what to the page's object, from the audit log
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from fastapi.responses import HTMLResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.console.forms import csrf_input
from server.db.tables import AuditEntry
from server.rollouts.controller import RolloutPolicy
from server.rollouts.summary import summarize

__all__ = [
    "DEFAULT_POLICY",
    "ago",
    "bar",
    "button_form",
    "e",
    "html",
    "page",
    "recent_actions",
    "rollout_table",
    "start_form",
    "table",
    "waves_text",
]

DEFAULT_POLICY = RolloutPolicy()  # the start form's defaults are the policy's own


def e(value: object) -> str:
    return escape("" if value is None else str(value))


def page(title: str, body: str, user: Any | None = None) -> str:
    who = (
        f'<span class="who">{e(user.name)} ({e(user.role)})</span>'
        '<form method="post" action="/console/logout" class="inline">'
        f'{csrf_input(user.csrf)}<button type="submit">Log out</button></form>'
        if user is not None
        else ""
    )
    nav = (
        '<nav><a href="/console/">Fleet</a> <a href="/console/rollouts">Rollouts</a> '
        '<a href="/console/pipeline">Pipeline</a> '
        '<a href="/console/devices">Devices</a> <a href="/console/monitor">Monitor</a> '
        f'{who}</nav>'
        if user is not None
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · EdgeOps</title>
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head><body>
<header><strong>EdgeOps</strong> console {nav}</header>
<main><h1>{e(title)}</h1>
{body}
</main></body></html>"""


def bar(done: int, failed: int, total: int, ident: str = "") -> str:
    """A progress bar: committed (green), failed (red), the rest empty."""
    total = max(total, 1)
    ok_pct = 100.0 * done / total
    bad_pct = 100.0 * failed / total
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<div class="bar"{attr}><span class="ok" style="width:{ok_pct:.1f}%"></span>'
        f'<span class="bad" style="width:{bad_pct:.1f}%"></span></div>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], ident: str = "") -> str:
    """`rows` hold HTML already escaped by the caller."""
    attr = f' id="{e(ident)}"' if ident else ""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def button_form(action: str, label: str, *, csrf: str, enabled: bool = True,
                ident: str = "") -> str:
    disabled = "" if enabled else " disabled"
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<form method="post" action="{e(action)}" class="inline">{csrf_input(csrf)}'
        f'<button type="submit"{attr}{disabled}>{e(label)}</button></form>'
    )


def html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code)


def ago(moment: datetime | None) -> str:
    """How long ago `moment` was, for people ("12 s ago", "5 min ago", "never")."""
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = max(0.0, time.time() - moment.timestamp())
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def waves_text(waves_pct: Sequence[float]) -> str:
    """Cumulative wave percentages as the form shows them: "1,10,50,100"."""
    return ",".join(f"{p:g}" for p in waves_pct)


def rollout_table(rollouts: list[Any], counts: dict[int, dict[str, int]]) -> str:
    rows = []
    for r in rollouts:
        s = summarize(r, phase_counts=counts.get(r.id, {}))
        rows.append((
            f'<a href="/console/rollouts/{r.id}">#{r.id}</a>', e(r.target),
            e(r.group_name or "(fleet)"), f'<span class="status {e(s.status)}">{e(s.status)}</span>',
            f"{s.done} / {s.devices}", bar(s.done, s.failed, s.devices),
        ))
    return table(["rollout", "release", "group", "status", "committed", "progress"], rows,
                 "rollouts")


def start_form(releases: list[str], groups: list[str], csrf: str) -> str:
    """The "start a rollout" form, filled with the default rollout policy."""
    release_options = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in releases)
    group_options = '<option value="">(whole fleet)</option>' + "".join(
        f'<option value="{e(g)}">{e(g)}</option>' for g in groups)
    waves = e(waves_text(DEFAULT_POLICY.waves_pct))
    soak = e(f"{DEFAULT_POLICY.soak_s:g}")
    failures = e(f"{DEFAULT_POLICY.failure_threshold_pct:g}")
    return f"""<h2>Start a rollout</h2>
<form method="post" action="/console/rollouts" id="start-rollout">{csrf_input(csrf)}
<label>Release <select name="target" id="start-target">{release_options}</select></label>
<label>Group <select name="group" id="start-group">{group_options}</select></label>
<label>Waves (cumulative %) <input name="waves" id="start-waves" value="{waves}"></label>
<label>Soak (s) <input name="soak_s" id="start-soak" value="{soak}" size="6"></label>
<label>Abort at failures (%) <input name="failure_threshold_pct" value="{failures}" size="4"></label>
<label>Switch <select name="switch" id="start-switch"><option value="">now, or in the windows if given</option>
<option value="now">now</option><option value="window">in the windows</option>
<option value="command">on a switch command</option></select></label>
<label>Switch windows (UTC) <input name="switch_windows" id="start-windows" size="28"
 placeholder="default=02:00-04:00, *=01:00-03:00"></label>
<button type="submit" id="start-submit">Start rollout</button></form>"""


def recent_actions(session: Session, *, paths: Sequence[str], target: str,
                   limit: int = 10) -> str:
    """The last `limit` audit entries about one object, newest first: those whose `target`
    is `target` ("rollout 3") or whose resource is one of `paths` or under one of them
    ("/api/rollouts/3" covers "/api/rollouts/3/pause")."""
    about = [AuditEntry.target == target, AuditEntry.resource.in_(list(paths))]
    about += [AuditEntry.resource.startswith(p.rstrip("/") + "/", autoescape=True) for p in paths]
    entries = session.scalars(
        select(AuditEntry).where(or_(*about)).order_by(AuditEntry.id.desc()).limit(limit))
    rows = [
        (e(f"{entry.at:%Y-%m-%d %H:%M:%S}"), e(entry.actor), e(entry.role or "–"),
         e(entry.action), e(entry.target or entry.resource), e(entry.detail or ""),
         e(entry.outcome))
        for entry in entries
    ]
    if not rows:
        return '<h2>Recent actions</h2><p id="no-actions">No recorded actions yet.</p>'
    return "<h2>Recent actions</h2>" + table(
        ["at (UTC)", "who", "role", "action", "on", "detail", "outcome"], rows, "recent-actions")
