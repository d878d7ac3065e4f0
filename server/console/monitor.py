"""`/console/monitor[/{model}]`: the fleet monitor per model (viewer role).

    GET /console/monitor          every monitored model with its cohorts and alarms
    GET /console/monitor/{model}  per cohort: drift score, estimated vs realised accuracy and
                                  volume over time (inline SVG), the top drifted features,
                                  and the model's recent monitor events
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from server.api.deps import SessionFactoryDep
from server.console.auth import ConsoleUserDep
from server.console.charts import Series, bar_chart, line_chart
from server.console.render import e, html, page, table
from server.monitoring import store

__all__ = ["router"]

router = APIRouter()

WINDOWS_SHOWN = 120
EVENTS_SHOWN = 20
ModelName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


def model_of(release: str) -> str:
    """The model name of a release target path (`<model>/<version>/model.<fmt>.onnx`)."""
    return release.split("/", 1)[0]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f} %"


def _alarm(cohort: dict[str, Any]) -> str:
    flags = [name for name, on in (("drift", cohort["drift_alarmed"]),
                                   ("quality", cohort["quality_alarmed"])) if on]
    if not flags:
        return '<span class="status completed">ok</span>'
    return f'<span class="status aborted">{e(" + ".join(flags))} alarm</span>'


def _cohort_rows(cohorts: list[dict[str, Any]], link: bool) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in cohorts:
        model = model_of(c["release"])
        name = (f'<a href="/console/monitor/{e(model)}#cohort-{e(c["cohort"])}">{e(c["cohort"])}</a>'
                if link else f'<a href="#cohort-{e(c["cohort"])}">{e(c["cohort"])}</a>')
        rows.append((
            name, e(c["group"] or "(fleet)"), e(c["verdict"]), _alarm(c), str(c["count"]),
            _pct(c["estimated_accuracy"]), _pct(c["realised_accuracy"]),
        ))
    return rows


_COHORT_HEADERS = ["cohort", "group", "last verdict", "alarm", "predictions", "est. accuracy",
                   "realised accuracy"]


@router.get("/monitor", response_class=HTMLResponse)
def monitor_index(user: ConsoleUserDep, session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        cohorts = store.list_cohorts(session)
    models = sorted({model_of(c["release"]) for c in cohorts})
    links = "".join(f'<li><a href="/console/monitor/{e(m)}">{e(m)}</a></li>' for m in models)
    body = (
        (f'<ul id="monitor-models">{links}</ul>' if models else
         "<p>No monitor windows yet: agents send telemetry, the monitor scores it per window.</p>")
        + "<h2>Cohorts</h2>" + table(_COHORT_HEADERS, _cohort_rows(cohorts, True), "cohorts")
    )
    return html(page("Monitor", body, user))


def _top_features(windows: list[Any], events: list[dict[str, Any]], cohort: str) -> str:
    """The features of the cohort's newest drift: its latest drift event, else its newest
    drifted window, by PSI."""
    for event in events:
        if event["cohort"] == cohort and event["kind"] == "drift_detected":
            evidence = event["evidence"] or {}
            features = list(evidence.get("features", []))
            psi = list((evidence.get("scores") or {}).get("psi", []))
            if features and len(psi) == len(features):
                return bar_chart("Top drifted features (PSI, latest drift event)",
                                 [f"feature {f}" for f in features], psi,
                                 ident=f"features-{cohort}")
    for row in reversed(windows):
        drifted = (row.scores or {}).get("drifted_features") or []
        psi = ((row.scores or {}).get("statistics") or {}).get("psi") or []
        if drifted and psi:
            order = sorted(drifted, key=lambda i: -(psi[i] or 0.0))[:5]
            return bar_chart("Top drifted features (PSI, newest drifted window)",
                             [f"feature {f}" for f in order], [psi[f] or 0.0 for f in order],
                             ident=f"features-{cohort}")
    return bar_chart("Top drifted features", [], [], ident=f"features-{cohort}")


def _cohort_section(cohort: dict[str, Any], windows: list[Any], events: list[dict[str, Any]]) -> str:
    name = cohort["cohort"]
    xs = [w.window_start for w in windows]
    marks = [w.verdict == "drift" for w in windows]
    drift = line_chart(
        "Drift score (max PSI; red: drifted windows)", xs,
        [Series("max PSI", "#d0453b", [w.max_psi for w in windows]),
         Series("drifted share", "#7a4fb5", [w.drifted_share for w in windows])],
        ident=f"drift-{name}", marks=marks,
    )
    accuracy = line_chart(
        "Accuracy: estimated vs realised", xs,
        [Series("estimated", "#2f6fd0", [w.estimated_accuracy for w in windows]),
         Series("realised", "#2e9e5b", [w.realised_accuracy for w in windows])],
        ident=f"accuracy-{name}", y_range=(0.0, 1.0),
    )
    volume = line_chart(
        "Volume (predictions per window)", xs,
        [Series("predictions", "#5b6472", [float(w.count) for w in windows])],
        ident=f"volume-{name}",
    )
    return (
        f'<section class="cohort" id="cohort-{e(name)}"><h2>{e(name)} {_alarm(cohort)}</h2>'
        f'<div class="charts">{drift}{accuracy}{volume}'
        f"{_top_features(windows, events, name)}</div></section>"
    )


def _event_rows(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for ev in events[:EVENTS_SHOWN]:
        evidence = ev["evidence"] or {}
        features = ", ".join(str(f) for f in evidence.get("features", [])[:5])
        rows.append((
            f'<span class="event {e(ev["kind"])}">{e(ev["kind"])}</span>', e(ev["cohort"]),
            e(ev["created_at"][:19].replace("T", " ")), e(features or "–"),
            e(evidence.get("drifted_share", "–")),
        ))
    return rows


@router.get("/monitor/{model}", response_class=HTMLResponse)
def monitor_model(
    model: ModelName, user: ConsoleUserDep, session_factory: SessionFactoryDep
) -> HTMLResponse:
    with session_factory() as session:
        cohorts = [c for c in store.list_cohorts(session) if model_of(c["release"]) == model]
        windows = {
            c["cohort"]: list(reversed(store.list_windows(session, cohort=c["cohort"],
                                                          limit=WINDOWS_SHOWN)))
            for c in cohorts
        }
        events = [ev for ev in store.list_events(session, limit=500)
                  if model_of(ev["release"]) == model]
    if not cohorts:
        body = (f"<p class=\"error\">No monitor windows for model {e(model)}.</p>"
                '<p><a href="/console/monitor">All monitored models</a></p>')
        return html(page(f"Monitor · {model}", body, user), status_code=404)
    body = (
        "<h2>Cohorts</h2>" + table(_COHORT_HEADERS, _cohort_rows(cohorts, False), "cohorts")
        + "<h2>Recent events</h2>"
        + table(["event", "cohort", "at (UTC)", "top features", "drifted share"],
                _event_rows(events), "events")
        + "".join(_cohort_section(c, windows[c["cohort"]], events) for c in cohorts)
    )
    return html(page(f"Monitor · {model}", body, user))
