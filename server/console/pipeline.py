"""`/console/pipeline`: continuous-delivery runs, one run's timeline, and its approval.

    GET  /console/pipeline                the runs, newest first (viewer)
    GET  /console/pipeline/{id}           the run: a timeline of its states (inline SVG),
                                          gate results, canary checks, every timeline entry
    POST /console/pipeline/{id}/approve   approve a run awaiting approval (an operator who is
                                          a person: never a service token)

Reads and the approval go through server.pipeline.service, like `/api/pipeline`; a refusal
(a domain error) is a page with the status `server.api.errors.status_for` gives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgeops.errors import EdgeOpsError
from server.api.audit import note
from server.api.deps import SessionFactoryDep
from server.api.errors import status_for
from server.auth.tokens import has_role
from server.console.auth import ConsoleOperatorDep, ConsoleUserDep
from server.console.model_card import card_link
from server.console.render import button_form, e, html, page, recent_actions, table
from server.pipeline import service
from server.pipeline.machine import FINAL_STATUSES

__all__ = ["StateSpan", "router", "state_spans", "timeline_chart"]

router = APIRouter(prefix="/pipeline")

RUNS_SHOWN = 200
RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]

# The badge colours console.css already has, by what a pipeline state means to the reader.
_BADGE = {"promoted": "completed", "rolled_back": "aborted", "refused": "aborted",
          "awaiting_approval": "paused"}


@dataclass(frozen=True)
class StateSpan:
    """The time a run spent in one state; `ongoing` while it is still there."""

    status: str
    start: float
    end: float
    ongoing: bool

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)


def state_spans(timeline: Sequence[dict[str, Any]], now: float) -> list[StateSpan]:
    """One span per state the run entered, in order (pure). Notes within a state (same
    status as the entry before) do not start a span; the last span of a run still in
    flight lasts until `now`, that of an ended run is its final instant."""
    starts: list[tuple[str, float]] = []
    for entry in timeline:
        if not starts or entry["status"] != starts[-1][0]:
            starts.append((entry["status"], float(entry["at"])))
    spans = [StateSpan(status, start, starts[i + 1][1], False)
             for i, (status, start) in enumerate(starts[:-1])]
    if starts:
        status, start = starts[-1]
        ongoing = status not in FINAL_STATUSES
        spans.append(StateSpan(status, start, max(start, now) if ongoing else start, ongoing))
    return spans


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _clock(epoch: float | None) -> str:
    return "–" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def timeline_chart(spans: Sequence[StateSpan], ident: str = "timeline-chart") -> str:
    """The run's states as an inline SVG Gantt chart: one row per state, its bar placed at
    when the state was entered and as long as the run stayed, labelled with the duration."""
    width, label_w, right, row_h, top = 560, 140, 70, 22, 8
    height = top + row_h * max(len(spans), 1) + 8
    t0 = spans[0].start if spans else 0.0
    total = max((s.end for s in spans), default=t0) - t0 or 1.0
    inner = width - label_w - right
    parts: list[str] = []
    for i, s in enumerate(spans):
        y = top + i * row_h
        x = label_w + inner * (s.start - t0) / total
        w = max(inner * s.duration_s / total, 2.0)
        colour = "#d0453b" if _BADGE.get(s.status) == "aborted" else (
            "#2e9e5b" if s.status == "promoted" else "#3b7dd8")
        text = _duration(s.duration_s) + (" so far" if s.ongoing else "")
        inside = x + w + 4 + 7 * len(text) > width  # no room right of the bar: write on it
        label = (f'<text x="{x + w - 4:.1f}" y="{y + 15}" font-size="11" text-anchor="end" '
                 f'fill="#fff">{e(text)}</text>' if inside else
                 f'<text x="{x + w + 4:.1f}" y="{y + 15}" font-size="11">{e(text)}</text>')
        parts.append(
            f'<g class="state-row" data-status="{e(s.status)}">'
            f"<title>{e(s.status)}: entered {e(_clock(s.start))} UTC</title>"
            f'<text x="{label_w - 6}" y="{y + 15}" font-size="11" text-anchor="end">'
            f'{e(s.status)}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{colour}"/>{label}</g>'
        )
    return (
        f'<svg class="chart" id="{e(ident)}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="time in each state">{"".join(parts)}</svg>'
    )


def _badge(status: str) -> str:
    return f'<span class="status {_BADGE.get(status, "running")}">{e(status)}</span>'


def _trigger(trigger: dict[str, Any]) -> str:
    if trigger.get("kind") == "event":
        return f"{trigger.get('event')} on {trigger.get('cohort')}"
    if trigger.get("kind", "manual") == "manual":
        return f"manual ({trigger.get('actor', '?')})"
    return str(trigger.get("kind"))


def _candidate(run: dict[str, Any]) -> str:
    version = run.get("candidate_version")
    return "–" if version is None else f"v{version}"


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else e(value)


def _gate_table(gates: list[dict[str, Any]]) -> str:
    rows = [
        (e(g.get("name")), _number(g.get("value")), _number(g.get("threshold")),
         _number(g.get("champion_value")),
         '<span class="status completed">pass</span>' if g.get("passed")
         else '<span class="status aborted">fail</span>', e(g.get("detail")))
        for g in gates
    ]
    return table(["gate", "value", "threshold", "champion", "result", "detail"], rows, "gates")


def _canary_table(checks: list[dict[str, Any]]) -> str:
    rows = []
    for c in checks:
        groups = "; ".join(
            f"{ev.get('group')}: {_number(ev.get('canary_accuracy'))} vs "
            f"{_number(ev.get('control_accuracy'))}"
            for ev in c.get("evidence", []) if isinstance(ev, dict)
        )
        at = c.get("at")
        rows.append((_clock(at) if isinstance(at, int | float) else "–",
                     e(c.get("verdict")), e(c.get("reason")), e(groups)))
    return table(["at (UTC)", "verdict", "reason", "canary vs control"], rows, "canary-checks")


def _approval(run: dict[str, Any], operator: bool, person: bool, csrf: str) -> str:
    if run.get("approved_by"):
        return f'<p id="approved-by">Approved by {e(run["approved_by"])}</p>'
    if run["status"] == "awaiting_approval" and operator and not person:
        return ('<p id="approval-needs-person">Waiting for approval: only a person may '
                "approve, and this token belongs to a service.</p>")
    if run["status"] == "awaiting_approval" and operator:
        return button_form(f"/console/pipeline/{run['id']}/approve", "Approve",
                           csrf=csrf, ident="btn-approve")
    if run["status"] == "awaiting_approval":
        return "<p>Waiting for an operator's approval.</p>"
    return ""


@router.get("", response_class=HTMLResponse)
def runs_page(user: ConsoleUserDep, session_factory: SessionFactoryDep) -> HTMLResponse:
    runs = service.list_runs(session_factory, limit=RUNS_SHOWN)
    rows = [
        (f'<a href="/console/pipeline/{r["id"]}">#{r["id"]}</a>', e(r["model"]),
         _badge(r["status"]), e(_trigger(r.get("trigger") or {})), e(_candidate(r)),
         e(r.get("reason")), e(_clock(r["created_at"])))
        for r in runs
    ]
    body = (table(["run", "model", "status", "trigger", "candidate", "reason", "started (UTC)"],
                  rows, "pipeline-runs")
            if rows else '<p id="no-runs">No pipeline runs yet: '
                         "<code>edgeops pipeline run</code> starts one.</p>")
    return html(page("Pipeline", body, user))


@router.get("/{run_id}", response_class=HTMLResponse)
def run_page(run_id: RunId, user: ConsoleUserDep,
             session_factory: SessionFactoryDep) -> HTMLResponse:
    try:
        run = service.get_run(session_factory, run_id)
    except EdgeOpsError as err:
        return html(page("Not found", f"<p>{e(err)}</p>", user), status_for(err))
    with session_factory() as session:
        actions = recent_actions(
            session, paths=(f"/api/pipeline/runs/{run_id}", f"/console/pipeline/{run_id}"),
            target=f"pipeline run {run_id}")
    timeline = run.get("timeline") or []
    results = run.get("results") or {}
    gates = results.get("gates") or []
    checks = (results.get("canary") or {}).get("checks") or []
    entries = [(e(_clock(t["at"])), e(t["status"]), e(t["message"])) for t in timeline]
    body = f"""<p>Model <code>{e(run["model"])}</code> — trigger {e(_trigger(run["trigger"]))},
started by {e(run["created_by"])} at {e(_clock(run["created_at"]))} UTC</p>
<p>Status <span id="run-status">{_badge(run["status"])}</span>
<span id="run-reason">{e(run.get("reason"))}</span></p>
<p>Champion {_number(run.get("champion_version"))} · candidate {e(_candidate(run))}
{f'<code>{e(run["candidate_target"])}</code> ({card_link(run["candidate_target"], "model card")})' if run.get("candidate_target") else ""}
{f' · <a href="/console/rollouts/{run["rollout_id"]}">rollout {run["rollout_id"]}</a>'
 if run.get("rollout_id") else ""}</p>
{_approval(run, has_role(user.role, "operator"), user.kind == "person", user.csrf)}
<h2>Timeline</h2>{timeline_chart(state_spans(timeline, time.time()))}
<h2>Gates</h2>{_gate_table(gates) if gates else '<p id="no-gates">No gate checked yet.</p>'}
<h2>Canary checks</h2>{_canary_table(checks) if checks else '<p id="no-checks">None yet.</p>'}
<h2>Every step</h2>{table(["at (UTC)", "state", "message"], entries, "run-timeline")}
{actions}"""
    return html(page(f"Pipeline run {run_id}", body, user))


@router.post("/{run_id}/approve")
def approve(request: Request, run_id: RunId, user: ConsoleOperatorDep,
            session_factory: SessionFactoryDep) -> Response:
    try:
        service.approve_run(session_factory, run_id, user.actor, kind=user.kind,
                            role=user.role)
    except EdgeOpsError as err:
        return html(page("Refused", f'<p class="error" id="refused">{e(err)}</p>', user),
                    status_for(err))
    note(request, f"approved pipeline run {run_id}")
    return RedirectResponse(f"/console/pipeline/{run_id}", status_code=303)
