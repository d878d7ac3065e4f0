"""`edgeops monitor`: what the fleet monitor sees, through the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from edgeops.cli import emit
from server.cli.api_client import HomeOption, JsonOption, ServerOption, TokenOption, connect

__all__ = ["app", "render_cohorts", "render_events", "render_windows"]

app = typer.Typer(
    name="monitor",
    help="The fleet monitor: drift and model quality per cohort (release x device group, "
    "and the release across the fleet), scored from device sketches in time windows. "
    "A window below the minimum count is 'inconclusive'; alarms need confirmation over "
    "consecutive windows and clear after clean ones.",
    no_args_is_help=True,
)

CohortOption = Annotated[
    str | None, typer.Option("--cohort", help="One cohort: <release>@<group>, or <release>@fleet.")
]
LimitOption = Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many rows.")]


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def render_cohorts(rows: list[dict[str, Any]]) -> str:
    """The status table (pure)."""
    if not rows:
        return "no monitor windows yet"
    lines = [f"{'cohort':<40} {'verdict':<12} {'alarm':<8} {'n':>7} {'drifted':>8} {'est.acc':>7} {'real':>7}"]
    for r in rows:
        alarm = "drift" if r["drift_alarmed"] else "quality" if r["quality_alarmed"] else "-"
        lines.append(
            f"{r['cohort']:<40} {r['verdict']:<12} {alarm:<8} {r['count']:>7} "
            f"{100 * r['drifted_share']:7.1f}% {_pct(r['estimated_accuracy']):>7} "
            f"{_pct(r['realised_accuracy']):>7}"
        )
    return "\n".join(lines)


def render_windows(rows: list[dict[str, Any]]) -> str:
    """The history table (pure)."""
    if not rows:
        return "no monitor windows yet"
    return "\n".join(
        f"{_when(r['window_start'])}  {r['cohort']:<36} {r['verdict']:<12} n={r['count']:<7} "
        f"max_psi={r['max_psi'] if r['max_psi'] is None else round(r['max_psi'], 3)}  "
        f"est={_pct(r['estimated_accuracy']).strip()}  features={r['drifted_features'][:5]}"
        for r in rows
    )


def render_events(rows: list[dict[str, Any]]) -> str:
    """The events list (pure)."""
    if not rows:
        return "no monitor events"
    lines = []
    for e in rows:
        ev = e.get("evidence") or {}
        detail = f"features {ev['features']}" if ev.get("features") else ev.get("what", "")
        lines.append(f"{e['id']:>5}  {_when(e['window_end'])}  {e['kind']:<16} {e['cohort']}  {detail}")
    return "\n".join(lines)


@app.command("status")
def status(
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every cohort: its latest window's verdict and whether it is alarmed."""
    rows = connect(home, server, token).get("/api/monitor/cohorts")
    emit({"cohorts": rows}, as_json, render_cohorts(rows))


@app.command("history")
def history(
    cohort: CohortOption = None,
    limit: LimitOption = 50,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Scored windows, newest first (every window is kept, drifted or not)."""
    params: dict[str, Any] = {"limit": limit}
    if cohort:
        params["cohort"] = cohort
    rows = connect(home, server, token).get("/api/monitor/windows", params=params)
    emit({"windows": rows}, as_json, render_windows(rows))


@app.command("events")
def events(
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="drift_detected, quality_dropped or recovered."),
    ] = None,
    cohort: CohortOption = None,
    limit: LimitOption = 50,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Monitor events with their evidence, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if kind:
        params["kind"] = kind
    if cohort:
        params["cohort"] = cohort
    rows = connect(home, server, token).get("/api/monitor/events", params=params)
    emit({"events": rows}, as_json, render_events(rows))
