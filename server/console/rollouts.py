"""`/console/rollouts`: the list, one rollout's live page, and start / pause / resume / abort,
and switch (the devices holding the release staged, waiting for their window or a command).

Changes go through the same rollout store as `/api/rollouts` and are audited the same way;
a refusal (a domain error) is a page with the status `server.api.errors.status_for` gives.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgeops.errors import EdgeOpsError
from edgeops.switch_window import group_windows
from server.api.audit import note
from server.api.deps import PublisherDep, SessionFactoryDep
from server.api.errors import status_for
from server.api.routes.rollouts import RolloutCreate
from server.auth.tokens import has_role
from server.console.auth import (
    ConsoleJsonUserDep,
    ConsoleOperatorDep,
    ConsoleUser,
    ConsoleUserDep,
)
from server.console.forms import FormDep
from server.console.render import (
    DEFAULT_POLICY,
    bar,
    button_form,
    e,
    html,
    page,
    recent_actions,
    rollout_table,
    start_form,
    table,
    waves_text,
)
from server.db.tables import DeviceLabel, Release
from server.pipeline import steps
from server.rollouts import store
from server.rollouts.runner import switch_now
from server.rollouts.summary import bytes_text, summarize
from server.rollouts.transfers import transfer_totals

__all__ = ["router"]

router = APIRouter(prefix="/rollouts")


@router.get("", response_class=HTMLResponse)
def rollouts_page(user: ConsoleUserDep, session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        rollouts = store.list_rollouts(session, limit=200)
        counts = store.phase_counts(session, [r.id for r in rollouts])
        releases = [r.target_path for r in session.scalars(
            select(Release).order_by(Release.id.desc()))]
        groups = sorted(set(session.scalars(select(DeviceLabel.group_name))) | {"default"})
    body = rollout_table(rollouts, counts)
    if has_role(user.role, "operator"):
        body += start_form(releases, groups, user.csrf)
    return html(page("Rollouts", body, user))


@router.post("")
def start_rollout(request: Request, form: FormDep, user: ConsoleOperatorDep,
                  session_factory: SessionFactoryDep) -> Response:
    target, group = form.get("target", ""), form.get("group", "")
    waves = form.get("waves", waves_text(DEFAULT_POLICY.waves_pct))
    soak_s = form.get("soak_s", str(DEFAULT_POLICY.soak_s))
    failure_threshold_pct = form.get("failure_threshold_pct",
                                     str(DEFAULT_POLICY.failure_threshold_pct))
    windows = [item for item in form.get("switch_windows", "").split(",") if item.strip()]
    try:
        body = RolloutCreate.model_validate({
            "target": target, "group": group or None,
            "waves_pct": [float(x) for x in waves.split(",") if x.strip()],
            "soak_s": float(soak_s), "failure_threshold_pct": float(failure_threshold_pct),
            "switch": form.get("switch") or None, "switch_windows": group_windows(windows),
        })
    except (ValueError, ValidationError) as err:  # SwitchWindowError is a ValueError
        return html(page("Rollout refused", f'<p class="error">{e(err)}</p>', user), 422)
    spec = store.RolloutSpec(target=body.target, group=body.group, tags=(), policy=body.policy())
    try:
        rollout_id = steps.start_rollout(session_factory, spec, user.name).id
    except EdgeOpsError as err:
        return html(page("Rollout refused", f'<p class="error" id="refused">{e(err)}</p>', user),
                    status_for(err))
    note(request, f"rollout {rollout_id} of {target} to {group or 'the whole fleet'}")
    return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)


@router.get("/{rollout_id}", response_class=HTMLResponse)
def rollout_page(rollout_id: int, user: ConsoleUserDep,
                 session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        try:
            rollout = store.get_rollout(session, rollout_id)
        except EdgeOpsError as err:
            return html(page("Not found", f"<p>{e(err)}</p>", user), 404)
        rows = store.assignments(session, rollout_id)
        summary = summarize(rollout, rows,
                            transfers=transfer_totals(session, [rollout_id])[rollout_id])
        actions = recent_actions(
            session, paths=(f"/api/rollouts/{rollout_id}", f"/console/rollouts/{rollout_id}"),
            target=f"rollout {rollout_id}")
    operator = has_role(user.role, "operator")
    wave_rows = [
        (f"{w.index}", f'<span class="wave-status">{e(w.status)}</span>',
         f'<span class="wave-count">{w.done} / {w.devices}</span>',
         bar(w.done, w.failed, w.devices))
        for w in summary.waves
    ]
    wave_table = table(["wave", "status", "committed", "progress"], wave_rows, "waves")
    for w in summary.waves:  # give each row an id for the live update
        wave_table = wave_table.replace(
            f"<tr><td>{w.index}</td>", f'<tr id="wave-{w.index}"><td>{w.index}</td>', 1)
    buttons = "".join(
        button_form(f"/console/rollouts/{rollout_id}/{action}", action.capitalize(),
                    csrf=user.csrf, enabled=operator and summary.status in allowed,
                    ident=f"btn-{action}")
        for action, allowed in (("pause", ("running",)), ("resume", ("paused",)),
                                ("abort", ("running", "paused")))
    ) + button_form(f"/console/rollouts/{rollout_id}/switch",
                    f"Switch {summary.staged} staged now", csrf=user.csrf,
                    enabled=operator and summary.staged > 0
                    and summary.status in ("running", "paused"),
                    ident="btn-switch")
    device_rows = [
        (f'<a href="/console/devices/{e(r.device_id)}">{e(r.device_id)}</a>',
         str(r.wave + 1), e(r.phase), e(r.reason))
        for r in rows[:500]
    ]
    policy = ", ".join(f"{k} {v}" for k, v in summary.policy.items())
    body = f"""<div data-rollout-progress="/console/rollouts/{rollout_id}/progress"
 data-operator="{1 if operator else 0}">
<p>Release <code>{e(summary.target)}</code> to
{e(summary.group or 'the whole fleet')} — started by {e(summary.created_by)}</p>
<p>Status <span id="rollout-status" class="status {e(summary.status)}">{e(summary.status)}</span>
<span id="rollout-reason">{e(summary.reason)}</span></p>
<p id="rollout-progress">{summary.done} / {summary.devices} devices committed
({summary.progress_pct}%), {summary.failed} failed, wave {summary.current_wave} of
{summary.wave_count}</p>
{bar(summary.done, summary.failed, summary.devices, "total-bar")}
<p id="rollout-bytes">Bytes sent {e(bytes_text(summary.bytes_sent, summary.bytes_full))}</p>
<p>{buttons}</p>
<h2>Waves</h2>{wave_table}
<p class="policy">Policy: {e(policy)}</p>
<h2>Devices</h2>{table(["device", "wave", "phase", "reason"], device_rows, "rollout-devices")}
{actions}
</div>"""
    return html(page(f"Rollout {rollout_id}", body, user))


@router.get("/{rollout_id}/progress")
def rollout_progress(rollout_id: int, _user: ConsoleJsonUserDep,
                     session_factory: SessionFactoryDep) -> Response:
    """The rollout summary as JSON, polled by the page's script."""
    with session_factory() as session:
        try:
            rollout = store.get_rollout(session, rollout_id)
        except EdgeOpsError as err:
            return JSONResponse({"detail": str(err)}, status_code=404)
        totals = transfer_totals(session, [rollout_id])[rollout_id]
        summary = summarize(rollout, store.assignments(session, rollout_id), transfers=totals)
        shown = bytes_text(summary.bytes_sent, summary.bytes_full)
        return JSONResponse({**summary.to_json(), "bytes_text": shown})


def _act(request: Request, rollout_id: int, what: store.Request, user: ConsoleUser,
         session_factory: sessionmaker) -> Response:
    try:
        store.operator_request(session_factory, rollout_id, what, user.name)
    except EdgeOpsError as err:
        return html(page("Refused", f'<p class="error">{e(err)}</p>', user), status_for(err))
    note(request, f"{what} rollout {rollout_id}")
    return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)


@router.post("/{rollout_id}/pause")
def pause(request: Request, rollout_id: int, user: ConsoleOperatorDep,
          session_factory: SessionFactoryDep) -> Response:
    return _act(request, rollout_id, "pause", user, session_factory)


@router.post("/{rollout_id}/resume")
def resume(request: Request, rollout_id: int, user: ConsoleOperatorDep,
           session_factory: SessionFactoryDep) -> Response:
    return _act(request, rollout_id, "resume", user, session_factory)


@router.post("/{rollout_id}/abort")
def abort(request: Request, rollout_id: int, user: ConsoleOperatorDep,
          session_factory: SessionFactoryDep) -> Response:
    return _act(request, rollout_id, "abort", user, session_factory)


@router.post("/{rollout_id}/switch")
def switch(request: Request, rollout_id: int, user: ConsoleOperatorDep,
           session_factory: SessionFactoryDep, publisher: PublisherDep) -> Response:
    """Switch every staged device of the rollout now (as `edgeops rollout switch ID`)."""
    try:
        switched = switch_now(session_factory, publisher, rollout_id, None, user.name)
    except EdgeOpsError as err:
        return html(page("Refused", f'<p class="error">{e(err)}</p>', user), status_for(err))
    note(request, f"switch {len(switched)} staged devices of rollout {rollout_id}")
    return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)
