"""A scenario's assertions, judged on what the run recorded (its timeline and the server's
database): each gives {name, passed, detail}, and a failed one says what was seen."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select

from edgeops.update_states import COMMITTED_STATES, TERMINAL_UPDATE_STATES
from server.db.tables import MonitorEventRecord, Release
from server.pipeline.training import recorded_training_runs
from simulations.scenario import Scenario

__all__ = ["evaluate_assertions"]


def _result(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def evaluate_assertions(scenario: Scenario, timeline: dict[str, Any],
                        session_factory: Any) -> list[dict[str, Any]]:
    results = []
    for assertion in scenario.assertions:
        judge = _JUDGES[assertion.kind]
        try:
            results.append(judge(assertion, scenario, timeline, session_factory))
        except (KeyError, TypeError, ValueError) as err:  # nothing recorded to judge on
            results.append(_result(assertion.name, False, f"could not be judged: {err!r}"))
    return results


def _detected(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    onset = timeline["onsets"].get(a.cohort)
    if onset is None:
        return _result(a.name, False, f"{a.cohort} never drifted in this scenario")
    onset_abs = timeline["started_at"] + onset
    with sf() as session:
        event = session.scalars(
            select(MonitorEventRecord).where(
                MonitorEventRecord.cohort.like(f"%@{a.cohort}"),
                MonitorEventRecord.kind.in_(("drift_detected", "quality_dropped")),
                MonitorEventRecord.window_end > onset_abs,
            ).order_by(MonitorEventRecord.id).limit(1)
        ).first()
    if event is None:
        return _result(a.name, False, f"no drift_detected/quality_dropped event for {a.cohort}")
    windows = math.ceil((event.window_end - onset_abs) / scenario.monitor.window_s - 1e-9)
    return _result(a.name, windows <= a.windows,
                   f"{event.kind} after {windows} windows ({event.window_end - onset_abs:.1f} s; "
                   f"allowed {a.windows})")


def _recovered(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    acc = timeline["accuracies"]
    after = acc["after"][a.cohort]
    before = acc["before"][a.cohort]
    bound = a.accuracy_at_least if a.accuracy_at_least is not None else before - a.within_pp_of_before / 100
    return _result(a.name, after >= bound - 1e-9,
                   f"{a.cohort}: {before:.3f} before, {acc.get('during', {}).get(a.cohort, float('nan')):.3f}"
                   f" during, {after:.3f} after (needs >= {bound:.3f})")


def _control(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    acc, drifted = timeline["accuracies"], set(timeline["onsets"])
    losses = {c: acc["before"][c] - acc["after"][c] for c in acc["before"] if c not in drifted}
    worst = max(losses.items(), key=lambda kv: kv[1]) if losses else (None, 0.0)
    return _result(a.name, worst[1] * 100 <= a.max_loss_pp + 1e-9,
                   ", ".join(f"{c} {-loss * 100:+.1f} pp" for c, loss in sorted(losses.items()))
                   + f" (at most -{a.max_loss_pp:g} pp)")


def _ended(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    run = timeline.get("run")
    status = run["status"] if run else None
    return _result(a.name, status == a.status,
                   f"pipeline run {run['id']} {status}: {run.get('reason')}" if run else "no pipeline run")


def _nothing_lost(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    sent, stored = timeline["summary"]["telemetry_sent"], timeline["summary"]["telemetry_stored"]
    return _result(a.name, sent > 0 and stored == sent,
                   f"{sent} telemetry batches sent, {stored} stored")


def _no_half_updated(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    """Every device settled on one whole version: its update (or its own rollback) is over
    (TERMINAL_UPDATE_STATES, or running), judged on the fleet as the server saw it at the end
    with every agent still running."""
    settled = TERMINAL_UPDATE_STATES | COMMITTED_STATES
    rows = [(d["device_id"], d["state"], d["version"]) for d in timeline["devices"]]
    bad = [f"{d} {s} v{v}" for d, s, v in rows if s not in settled or v is None]
    versions = sorted({v for _, _, v in rows if v is not None})
    return _result(a.name, not bad,
                   f"every device settled on one version ({', '.join(f'v{v}' for v in versions)})"
                   if not bad else f"{len(bad)} half-updated: {', '.join(bad[:5])}")


def _trained_once(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    run = timeline.get("run")
    if run is None:
        return _result(a.name, False, "no pipeline run")
    with sf() as session:
        count = len(recorded_training_runs(session, run["id"]))
    return _result(a.name, count == 1, f"{count} training runs recorded for pipeline run {run['id']}")


def _published(a: Any, scenario: Scenario, timeline: dict[str, Any], sf: Any) -> dict[str, Any]:
    with sf() as session:
        count = int(session.scalar(select(func.count()).select_from(Release)) or 0)
    return _result(a.name, count <= a.count, f"{count} releases published (at most {a.count})")


_JUDGES = {
    "detected_within_windows": _detected,
    "recovered": _recovered,
    "control_kept": _control,
    "pipeline_ended": _ended,
    "nothing_lost": _nothing_lost,
    "no_half_updated": _no_half_updated,
    "trained_once": _trained_once,
    "published_at_most": _published,
}
