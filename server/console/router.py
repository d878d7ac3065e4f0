"""Console routes: login, fleet overview, rollouts (list, detail, start, pause, resume,
abort), devices (list, detail). Pages read the database through the same functions as the
REST API; mutations go through the same rollout store and are audited the same way.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from edgeops.errors import EdgeOpsError
from server.api.audit import note
from server.api.deps import CONSOLE_COOKIE, Principal, authenticate
from server.app.http_app import status_for
from server.auth.tokens import has_role
from server.console.render import bar, button_form, e, page, table
from server.db.tables import DeviceEvent, DeviceLabel, Release, TelemetryRecord
from server.fleet import inventory
from server.rollouts import store
from server.rollouts.summary import summarize

__all__ = ["console_router"]

STATIC_DIR = Path(__file__).resolve().parent
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
ACTIVE = ("running", "paused", "aborting")


MAX_FORM_BYTES = 16 * 1024


class _LoginRequired(Exception):
    pass


async def _form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (no multipart dependency needed)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, detail=f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as err:
        raise HTTPException(400, detail=f"unreadable form: {err}") from err
    return {key: value[:512] for key, value in pairs}


FormDep = Annotated[dict[str, str], Depends(_form)]


def _user(request: Request) -> Principal:
    principal = authenticate(request, request.cookies.get(CONSOLE_COOKIE, ""))
    if principal is None:
        raise _LoginRequired
    request.state.principal = principal
    return principal


def _operator(request: Request) -> Principal:
    user = _user(request)
    if not has_role(user.role, "operator"):
        raise HTTPException(403, detail=f"{user.name} is a {user.role}; operators only")
    return user


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code)


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = max(0.0, time.time() - moment.timestamp())
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def console_router() -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)

    def guarded(handler: Any) -> Any:
        """Run a page handler; send visitors without a valid cookie to the login page."""

        @functools.wraps(handler)
        def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return handler(request, *args, **kwargs)
            except _LoginRequired:
                return RedirectResponse("/console/login", status_code=303)

        return wrapper

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, detail="no such file")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @router.get("/login", response_class=HTMLResponse)
    def login_page(error: str = "") -> HTMLResponse:
        message = f'<p class="error">{e(error)}</p>' if error else ""
        return _html(page("Log in", f"""{message}
<form method="post" action="/console/login">
<label>API token <input type="password" name="token" id="token" size="50" autofocus></label>
<button type="submit" id="login">Log in</button></form>
<p>Use a token from <code>POST /api/tokens</code> or the admin token in
<code>&lt;home&gt;/admin.token</code>.</p>"""))

    @router.post("/login")
    def login(request: Request, form: FormDep) -> Response:
        token = form.get("token", "")
        principal = authenticate(request, token.strip())
        if principal is None:
            return RedirectResponse("/console/login?error=unknown+or+revoked+token",
                                    status_code=303)
        request.state.principal = principal
        note(request, "console login")
        response = RedirectResponse("/console/", status_code=303)
        response.set_cookie(CONSOLE_COOKIE, token.strip(), httponly=True, samesite="strict",
                            max_age=12 * 3600)
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(CONSOLE_COOKIE)
        return response

    @router.get("/", response_class=HTMLResponse)
    @guarded
    def overview(request: Request) -> Response:
        user = _user(request)
        with request.app.state.session_factory() as session:
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
                ("rollouts-active", sum(1 for r in rollouts if r.status in ACTIVE),
                 "active rollouts"),
            )
        )
        version_rows = [
            (e(release), str(n), bar(n, 0, len(devices)))
            for release, n in versions.most_common()
        ]
        group_rows = [(e(g), str(n)) for g, n in sorted(groups.items())]
        body = (
            f'<div class="cards">{cards}</div>'
            "<h2>Versions across the fleet</h2>"
            + table(["release", "devices", "share"], version_rows, "versions")
            + "<h2>Groups</h2>" + table(["group", "devices"], group_rows, "groups")
            + "<h2>Recent rollouts</h2>" + _rollout_table(rollouts, counts)
            + (_start_form(releases, sorted(groups)) if has_role(user.role, "operator") else "")
        )
        return _html(page("Fleet overview", body, user))

    @router.get("/rollouts", response_class=HTMLResponse)
    @guarded
    def rollouts_page(request: Request) -> Response:
        user = _user(request)
        with request.app.state.session_factory() as session:
            rollouts = store.list_rollouts(session, limit=200)
            counts = store.phase_counts(session, [r.id for r in rollouts])
            releases = [r.target_path for r in session.scalars(
                select(Release).order_by(Release.id.desc()))]
            groups = sorted({g for g in session.scalars(select(DeviceLabel.group_name))}
                            | {"default"})
        body = _rollout_table(rollouts, counts)
        if has_role(user.role, "operator"):
            body += _start_form(releases, groups)
        return _html(page("Rollouts", body, user))

    @router.post("/rollouts")
    @guarded
    def start_rollout(request: Request, form: FormDep) -> Response:
        from server.api.routes.rollouts import RolloutCreate

        user = _operator(request)
        target, group = form.get("target", ""), form.get("group", "")
        waves = form.get("waves", "1,10,50,100")
        soak_s = form.get("soak_s", "60")
        failure_threshold_pct = form.get("failure_threshold_pct", "10")
        try:
            body = RolloutCreate(
                target=target, group=group or None,
                waves_pct=[float(x) for x in waves.split(",") if x.strip()],
                soak_s=float(soak_s), failure_threshold_pct=float(failure_threshold_pct),
            )
        except (ValueError, ValidationError) as err:
            return _html(page("Rollout refused", f'<p class="error">{e(err)}</p>', user), 422)
        spec = store.RolloutSpec(target=body.target, group=body.group, tags=(),
                                 policy=body.policy())
        try:
            with request.app.state.session_factory.begin() as session:
                rollout_id = store.create_rollout(session, spec, user.name, time.time()).id
        except EdgeOpsError as err:
            return _html(page("Rollout refused", f'<p class="error" id="refused">{e(err)}</p>',
                              user), status_for(err))
        note(request, f"rollout {rollout_id} of {target} to {group or 'the whole fleet'}")
        return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)

    @router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    @guarded
    def rollout_page(request: Request, rollout_id: int) -> Response:
        user = _user(request)
        with request.app.state.session_factory() as session:
            try:
                rollout = store.get_rollout(session, rollout_id)
            except EdgeOpsError as err:
                return _html(page("Not found", f"<p>{e(err)}</p>", user), 404)
            rows = store.assignments(session, rollout_id)
            summary = summarize(rollout, rows)
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
                        enabled=operator and summary.status in allowed, ident=f"btn-{action}")
            for action, allowed in (("pause", ("running",)), ("resume", ("paused",)),
                                    ("abort", ("running", "paused")))
        )
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
<p>{buttons}</p>
<h2>Waves</h2>{wave_table}
<p class="policy">Policy: {e(policy)}</p>
<h2>Devices</h2>{table(["device", "wave", "phase", "reason"], device_rows, "rollout-devices")}
</div>"""
        return _html(page(f"Rollout {rollout_id}", body, user))

    @router.get("/rollouts/{rollout_id}/progress")
    def rollout_progress(request: Request, rollout_id: int) -> Response:
        try:
            _user(request)
        except _LoginRequired:
            return JSONResponse({"detail": "log in first"}, status_code=401)
        with request.app.state.session_factory() as session:
            try:
                rollout = store.get_rollout(session, rollout_id)
            except EdgeOpsError as err:
                return JSONResponse({"detail": str(err)}, status_code=404)
            return JSONResponse(summarize(rollout, store.assignments(session, rollout_id))
                                .to_json())

    def act(request: Request, rollout_id: int, what: store.Request) -> Response:
        user = _operator(request)
        try:
            with request.app.state.session_factory.begin() as session:
                store.request(session, rollout_id, what, user.name)
        except EdgeOpsError as err:
            return _html(page("Refused", f'<p class="error">{e(err)}</p>', user),
                         status_for(err))
        note(request, f"{what} rollout {rollout_id}")
        return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)

    @router.post("/rollouts/{rollout_id}/pause")
    @guarded
    def pause(request: Request, rollout_id: int) -> Response:
        return act(request, rollout_id, "pause")

    @router.post("/rollouts/{rollout_id}/resume")
    @guarded
    def resume(request: Request, rollout_id: int) -> Response:
        return act(request, rollout_id, "resume")

    @router.post("/rollouts/{rollout_id}/abort")
    @guarded
    def abort(request: Request, rollout_id: int) -> Response:
        return act(request, rollout_id, "abort")

    @router.get("/devices", response_class=HTMLResponse)
    @guarded
    def devices_page(request: Request) -> Response:
        user = _user(request)
        with request.app.state.session_factory() as session:
            devices = inventory.list_devices(session)
            labels = {x.device_id: x for x in session.scalars(select(DeviceLabel))}
        rows = [
            (f'<a href="/console/devices/{e(d.device_id)}">{e(d.device_id)}</a>',
             "online" if d.online else "offline", e(d.state), e(d.release),
             e(labels[d.device_id].group_name if d.device_id in labels else "default"),
             e(_ago(d.last_seen_at)))
            for d in devices
        ]
        return _html(page("Devices", table(
            ["device", "presence", "state", "release", "group", "last seen"], rows, "devices"),
            user))

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    @guarded
    def device_page(request: Request, device_id: str) -> Response:
        user = _user(request)
        with request.app.state.session_factory() as session:
            try:
                device = inventory.get_device(session, device_id)
            except EdgeOpsError as err:
                return _html(page("Not found", f"<p>{e(err)}</p>", user), 404)
            label = session.get(DeviceLabel, device_id)
            events = list(session.scalars(
                select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                .order_by(DeviceEvent.id.desc()).limit(50)))
            telemetry = session.scalars(
                select(TelemetryRecord).where(TelemetryRecord.device_id == device_id)
                .order_by(TelemetryRecord.window_end.desc()).limit(1)).first()
        facts = [
            ("presence", "online" if device.online else "offline"),
            ("state", device.state), ("release", device.release),
            ("update target", device.target), ("reason", device.reason),
            ("model", f"{device.model} v{device.version}" if device.model else None),
            ("agent", device.agent_version),
            ("group", label.group_name if label else "default"),
            ("tags", ", ".join(label.tags) if label else ""),
            ("last seen", _ago(device.last_seen_at)),
            ("telemetry messages", device.telemetry_messages),
        ]
        body = table(["", ""], [(e(k), e(v)) for k, v in facts], "device-facts")
        body += "<h2>Health (last telemetry)</h2>" + _health(telemetry)
        body += "<h2>Status history</h2>" + table(
            ["at", "presence", "state", "release", "target", "reason"],
            [(e(_ago(ev.at)), "online" if ev.online else "offline", e(ev.state), e(ev.release),
              e(ev.target), e(ev.reason)) for ev in events], "history")
        return _html(page(f"Device {device_id}", body, user))

    return router


def _health(record: TelemetryRecord | None) -> str:
    if record is None:
        return "<p>No telemetry yet.</p>"
    payload: dict[str, Any] = dict(record.payload)
    latency = payload.get("latency") or {}
    confidence = payload.get("confidence") or {}
    count = payload.get("count", 0)
    errors = payload.get("errors", 0)
    facts = [
        ("window", f"{record.window_end - record.window_start:.1f} s, {count} predictions"),
        ("error rate", f"{errors / count:.1%}" if count else "-"),
        ("latency p50 / p95", f"{latency.get('p50_ms', '-')} / {latency.get('p95_ms', '-')} ms"),
        ("mean confidence", confidence.get("mean", "-")),
        ("model", f"{payload.get('model')} v{payload.get('version')}"),
        ("RSS", f"{payload.get('rss_mb', '-')} MB"),
    ]
    return table(["", ""], [(e(k), e(v)) for k, v in facts], "health")


def _rollout_table(rollouts: list[Any], counts: dict[int, dict[str, int]]) -> str:
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


def _start_form(releases: list[str], groups: list[str]) -> str:
    release_options = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in releases)
    group_options = '<option value="">(whole fleet)</option>' + "".join(
        f'<option value="{e(g)}">{e(g)}</option>' for g in groups)
    return f"""<h2>Start a rollout</h2>
<form method="post" action="/console/rollouts" id="start-rollout">
<label>Release <select name="target" id="start-target">{release_options}</select></label>
<label>Group <select name="group" id="start-group">{group_options}</select></label>
<label>Waves (cumulative %) <input name="waves" id="start-waves" value="1,10,50,100"></label>
<label>Soak (s) <input name="soak_s" id="start-soak" value="60" size="6"></label>
<label>Abort at failures (%) <input name="failure_threshold_pct" value="10" size="4"></label>
<button type="submit" id="start-submit">Start rollout</button></form>"""
