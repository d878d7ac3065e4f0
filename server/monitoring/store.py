"""The monitor's tables: telemetry rows of a window, scores, events, cohort state, lease.

Everything here runs inside the caller's session (one transaction per monitor tick).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from pydantic_core import from_json
from sqlalchemy import Text, cast, delete, func, select, text, update
from sqlalchemy.orm import Session

from server.db.tables import (
    Device,
    DeviceLabel,
    MonitorCohortState,
    MonitorEventRecord,
    MonitorLease,
    MonitorWindowScore,
    TelemetryRecord,
)
from server.monitoring.detector import CohortScore, CohortState, MonitorEvent
from server.monitoring.merge import TelemetryRow

__all__ = [
    "LEASE_NAME",
    "TelemetryRow",
    "acquire_lease",
    "earliest_telemetry_end",
    "latest_windows",
    "list_cohorts",
    "list_events",
    "list_windows",
    "load_states",
    "prune_telemetry",
    "save_events",
    "save_score",
    "save_states",
    "set_watermark",
    "telemetry_rows",
    "window_summary",
]

logger = logging.getLogger(__name__)

LEASE_NAME = "monitor"
_ADVISORY_KEY = 0x6D6F6E69  # "moni"
TELEMETRY_CHUNK_ROWS = 1000


def acquire_lease(
    session: Session, holder: str, ttl_s: float, now: float, *, name: str = LEASE_NAME,
    advisory_key: int = _ADVISORY_KEY,
) -> MonitorLease | None:
    """The lease row `name` if this process may do that work now (the monitor; the
    pipeline runner uses its own name and key), else None.

    PostgreSQL: a transaction-scoped advisory lock first (two replicas never tick at once);
    SQLite: the database's write lock first. Then the lease row (FOR UPDATE where supported)
    must be free, expired or ours. The caller commits, which releases the advisory lock and keeps the lease.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        got = session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": advisory_key})
        if not got.scalar():
            return None
    elif dialect == "sqlite":
        # A write first: takes SQLite's write lock before anything is read, so a second
        # process waits here (busy timeout) and then sees this one's lease.
        session.execute(
            update(MonitorLease)
            .where(MonitorLease.name == name)
            .values(expires_at=MonitorLease.expires_at)
        )
    lease = session.execute(
        select(MonitorLease).where(MonitorLease.name == name).with_for_update()
    ).scalar_one_or_none()
    if lease is None:
        lease = MonitorLease(name=name, holder=holder, expires_at=now + ttl_s, watermark=None)
        session.add(lease)
        session.flush()
        return lease
    if lease.holder not in (None, holder) and lease.expires_at > now:
        return None
    lease.holder = holder
    lease.expires_at = now + ttl_s
    return lease


def set_watermark(lease: MonitorLease, watermark: float) -> None:
    lease.watermark = watermark


def earliest_telemetry_end(session: Session) -> float | None:
    return session.execute(select(func.min(TelemetryRecord.window_end))).scalar()


def telemetry_rows(
    session: Session, start: float, end: float, *, chunk_rows: int = TELEMETRY_CHUNK_ROWS
) -> Iterator[TelemetryRow]:
    """Telemetry batches whose window ended in [start, end), with group and release.

    Streamed `chunk_rows` at a time (a server-side cursor on PostgreSQL), so a window of a
    large fleet is never held in memory at once. The payload is read as JSON text and parsed
    here (pydantic-core's parser: a third of the time of the json module's); a payload that
    is not a JSON object reads as {}.
    """
    query = (
        select(
            TelemetryRecord.device_id,
            TelemetryRecord.model,
            TelemetryRecord.version,
            Device.release,
            DeviceLabel.group_name,
            cast(TelemetryRecord.payload, Text),
        )
        .outerjoin(Device, Device.device_id == TelemetryRecord.device_id)
        .outerjoin(DeviceLabel, DeviceLabel.device_id == TelemetryRecord.device_id)
        .where(TelemetryRecord.window_end >= start, TelemetryRecord.window_end < end)
        .execution_options(yield_per=chunk_rows)
    )
    for d, m, v, r, g, raw in session.connection().execute(query):
        yield TelemetryRow(d, m, v, r, g or "default", _payload(raw))


def _payload(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        payload = from_json(raw, cache_strings="keys")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if np.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_score(
    session: Session,
    score: CohortScore,
    *,
    release: str,
    group_name: str | None,
    window_start: float,
    window_end: float,
    devices: int,
) -> None:
    psi = score.scores.get("psi")
    session.add(
        MonitorWindowScore(
            cohort=score.cohort,
            release=release,
            group_name=group_name,
            window_start=window_start,
            window_end=window_end,
            count=score.count,
            devices=devices,
            verdict=score.verdict,
            drifted_share=score.drifted_share,
            max_psi=max(psi) if psi else None,
            prior_shift=score.prior_shift,
            estimated_accuracy=score.estimated_accuracy,
            naive_accuracy=score.naive_accuracy,
            realised_accuracy=score.realised_accuracy,
            feedback_count=score.feedback_count,
            scores=_jsonable(
                {
                    "statistics": dict(score.scores),
                    "p_values": score.p_values,
                    "adjusted_p": score.adjusted_p,
                    "thresholds": dict(score.thresholds),
                    "drifted_features": score.drifted_features,
                    "prior_adjusted_p": score.prior_adjusted_p,
                    "evidence": score.evidence,
                }
            ),
        )
    )


def save_events(
    session: Session, events: Iterable[MonitorEvent], *, release: str, window_end: float
) -> None:
    for event in events:
        session.add(
            MonitorEventRecord(
                kind=event.kind,
                cohort=event.cohort,
                release=release,
                window_end=window_end,
                evidence=_jsonable(dict(event.evidence)),
            )
        )


def load_states(session: Session, cohorts: Sequence[str]) -> dict[str, CohortState]:
    rows = session.execute(
        select(MonitorCohortState).where(MonitorCohortState.cohort.in_(list(cohorts)))
    ).scalars()
    states: dict[str, CohortState] = {}
    for row in rows:
        raw = dict(row.state)
        raw["windows"] = tuple(raw.get("windows", ()))
        states[row.cohort] = CohortState(**raw)
    return states


def save_states(session: Session, states: dict[str, CohortState]) -> None:
    for cohort, state in states.items():
        row = session.get(MonitorCohortState, cohort)
        value = _jsonable(asdict(state))
        if row is None:
            session.add(MonitorCohortState(cohort=cohort, state=value))
        else:
            row.state = value


def prune_telemetry(session: Session, older_than: float, watermark: float) -> int:
    """Delete telemetry rows already rolled up (window ended before the watermark) and
    received before `older_than` (epoch seconds). Window scores are kept."""
    cutoff = min(older_than, watermark)
    result = session.execute(delete(TelemetryRecord).where(TelemetryRecord.window_end < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)



# Reads for the API and CLI ----------------------------------------------------------------


def window_summary(row: MonitorWindowScore, *, with_scores: bool = False) -> dict[str, Any]:
    """A stored window score as JSON (per-feature scores only `with_scores`)."""
    out: dict[str, Any] = {
        "cohort": row.cohort,
        "release": row.release,
        "group": row.group_name,
        "window_start": row.window_start,
        "window_end": row.window_end,
        "count": row.count,
        "devices": row.devices,
        "verdict": row.verdict,
        "drifted_share": row.drifted_share,
        "drifted_features": (row.scores or {}).get("drifted_features", []),
        "max_psi": row.max_psi,
        "prior_shift": row.prior_shift,
        "estimated_accuracy": row.estimated_accuracy,
        "naive_accuracy": row.naive_accuracy,
        "realised_accuracy": row.realised_accuracy,
        "feedback_count": row.feedback_count,
    }
    if with_scores:
        out["scores"] = row.scores
    return out


def list_windows(
    session: Session, cohort: str | None = None, since: float | None = None, limit: int = 100
) -> list[MonitorWindowScore]:
    """Newest first."""
    query = select(MonitorWindowScore).order_by(
        MonitorWindowScore.window_start.desc(), MonitorWindowScore.cohort
    )
    if cohort is not None:
        query = query.where(MonitorWindowScore.cohort == cohort)
    if since is not None:
        query = query.where(MonitorWindowScore.window_start >= since)
    return list(session.execute(query.limit(limit)).scalars())


def latest_windows(session: Session, *, conclusive_only: bool = False) -> list[MonitorWindowScore]:
    """Each cohort's newest window (newest conclusive one, `conclusive_only`)."""
    latest = select(
        MonitorWindowScore.cohort, func.max(MonitorWindowScore.window_start).label("ws")
    )
    if conclusive_only:
        latest = latest.where(MonitorWindowScore.verdict != "inconclusive")
    newest = latest.group_by(MonitorWindowScore.cohort).subquery()
    return list(
        session.execute(
            select(MonitorWindowScore)
            .join(
                newest,
                (MonitorWindowScore.cohort == newest.c.cohort)
                & (MonitorWindowScore.window_start == newest.c.ws),
            )
            .order_by(MonitorWindowScore.cohort)
        ).scalars()
    )


def list_cohorts(session: Session) -> list[dict[str, Any]]:
    """Every cohort with its latest window and its confirmation state."""
    rows = latest_windows(session)
    states = {s.cohort: s.state for s in session.execute(select(MonitorCohortState)).scalars()}
    out = []
    for row in rows:
        state = states.get(row.cohort, {})
        out.append(
            {
                **window_summary(row),
                "drift_alarmed": bool(state.get("drift_alarmed", False)),
                "quality_alarmed": bool(state.get("quality_alarmed", False)),
            }
        )
    return out


def list_events(
    session: Session, kind: str | None = None, cohort: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first."""
    query = select(MonitorEventRecord).order_by(MonitorEventRecord.id.desc())
    if kind is not None:
        query = query.where(MonitorEventRecord.kind == kind)
    if cohort is not None:
        query = query.where(MonitorEventRecord.cohort == cohort)
    return [
        {
            "id": e.id,
            "kind": e.kind,
            "cohort": e.cohort,
            "release": e.release,
            "window_end": e.window_end,
            "evidence": e.evidence,
            "created_at": e.created_at.isoformat(),
        }
        for e in session.execute(query.limit(limit)).scalars()
    ]
