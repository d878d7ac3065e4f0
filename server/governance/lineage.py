"""Lineage: which release a device ran at a moment, and everything that release came from.

    parse_time("2026-12-01T10:00:00+00:00" | "now")  -> an aware datetime (ConfigError else)
    release_intervals(points, current)               -> the device's releases over time (pure)
    device_lineage(session, device_id, at, tuf_dir)  -> what ran at `at`, since and until when,
                                                        and the release's chain
    release_lineage(session, "model/2/model.int8.onnx" | "model:2", tuf_dir)
                                                     -> the chain and the devices that ran it

The status history is the `device_events` table (the rollout runner records every change of a
device's reported status) plus the `devices` row (the latest status, in case the runner has not
recorded it yet). The chain is read from the registry (release -> model version -> training
run), the pipeline run that published it (trigger, participants, gates, approval) or none (a
manual publish), the signed TUF targets metadata of the version that added it, and the
rollouts that sent it to devices. Answers are JSON-ready dicts with ISO 8601 UTC times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root, Targets

from edgeops.errors import ConfigError, NotFoundError
from server.db.tables import (
    Device,
    DeviceEvent,
    Model,
    ModelVersion,
    PipelineRun,
    Release,
    Rollout,
    RolloutDevice,
    TrainingRun,
    as_utc,
)
from server.trust.repository import TufRepository

__all__ = [
    "Interval",
    "StatusPoint",
    "device_lineage",
    "parse_time",
    "release_chain",
    "release_intervals",
    "release_lineage",
]

AUTOMATIC_APPROVAL = "automatic (policy)"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`text` as an aware UTC datetime: ISO 8601 with a timezone (`Z` allowed) or "now"."""
    if text.strip().lower() == "now":
        return now or datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise ConfigError(
            f"invalid time {text!r}: use ISO 8601 with a timezone, e.g. "
            "2026-12-01T10:00:00Z or 2026-12-01T11:00:00+01:00, or 'now'"
        ) from err
    if moment.tzinfo is None:
        raise ConfigError(
            f"time {text!r} has no timezone: add one (e.g. 'Z' or '+01:00') so it is unambiguous"
        )
    return moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).astimezone(UTC).isoformat()


def _iso_epoch(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


# The pure core: a device's status points -> release intervals ------------------------------


@dataclass(frozen=True)
class StatusPoint:
    """A device's reported status from `at` on (one DeviceEvent, or the device row)."""

    at: datetime
    release: str | None
    online: bool
    state: str | None


@dataclass(frozen=True)
class Interval:
    """The device had `release` installed from `since` until `until` (None: still has it)."""

    release: str | None
    since: datetime
    until: datetime | None

    def covers(self, moment: datetime) -> bool:
        return self.since <= moment and (self.until is None or moment < self.until)

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "since": _iso(self.since), "until": _iso(self.until)}


def release_intervals(
    points: Sequence[StatusPoint], current: StatusPoint | None = None
) -> list[Interval]:
    """The releases a device had installed over time, from its status points in time order.

    A change of presence or state alone does not end an interval (an offline device still
    has its release installed). `current` (the device row) is appended when it says
    something the points do not: a release change the runner has not recorded yet.
    """
    ordered = sorted(points, key=lambda p: p.at)
    if current is not None and (
        not ordered or (current.release != ordered[-1].release and current.at >= ordered[-1].at)
    ):
        ordered.append(current)
    intervals: list[Interval] = []
    for point in ordered:
        if intervals and intervals[-1].release == point.release:
            continue
        if intervals:
            last = intervals[-1]
            intervals[-1] = Interval(last.release, last.since, point.at)
        intervals.append(Interval(point.release, point.at, None))
    return intervals


def _points(session: Session, device_id: str) -> list[StatusPoint]:
    rows = session.scalars(
        select(DeviceEvent).where(DeviceEvent.device_id == device_id)
        .order_by(DeviceEvent.at, DeviceEvent.id)
    )
    return [StatusPoint(as_utc(r.at), r.release, r.online, r.state) for r in rows]


def _current_point(device: Device) -> StatusPoint:
    at = device.last_status_at or device.first_seen_at
    return StatusPoint(as_utc(at), device.release, device.online, device.state)


def _status_at(points: Sequence[StatusPoint], moment: datetime) -> StatusPoint | None:
    before = [p for p in points if p.at <= moment]
    return before[-1] if before else None


# The chain of one release ---------------------------------------------------------------


def _resolve_release(session: Session, name: str) -> Release:
    """The release named by its target path or as `model:version`; NotFoundError if none."""
    release = session.scalar(select(Release).where(Release.target_path == name))
    if release is not None:
        return release
    model, sep, version = name.rpartition(":")
    if not sep or not version.isdigit():
        raise NotFoundError(
            f"no release {name!r}: give its target path (e.g. digits/2/model.int8.onnx) "
            "or model:version (e.g. digits:2)"
        )
    rows = session.scalars(
        select(Release).join(ModelVersion, Release.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(Model.name == model, ModelVersion.version == int(version))
        .order_by(Release.id)
    ).all()
    if not rows:
        raise NotFoundError(f"no release of {model!r} version {version}")
    if len(rows) > 1:
        raise ConfigError(
            f"{name!r} is released in several formats; name one: "
            + ", ".join(r.target_path for r in rows)
        )
    return rows[0]


def _publishing_run(session: Session, target: str, version: ModelVersion) -> PipelineRun | None:
    clauses = [PipelineRun.candidate_target == target]
    if version.training_run_id is not None:
        clauses.append(PipelineRun.training_run_id == version.training_run_id)
    return session.scalars(
        select(PipelineRun).where(or_(*clauses)).order_by(PipelineRun.id)
    ).first()


def _approval(run: PipelineRun) -> str | None:
    if run.approved_by is not None:
        return run.approved_by
    mode = (run.policy or {}).get("approval", {}).get("mode")
    passed = run.status in {"canary", "promoted", "rolled_back"}
    return AUTOMATIC_APPROVAL if mode == "automatic" and passed else None


def _publication(run: PipelineRun | None) -> dict[str, Any]:
    if run is None:
        return {"kind": "manual", "pipeline_run": None}
    results = run.results or {}
    return {
        "kind": "pipeline",
        "pipeline_run": run.id,
        "status": run.status,
        "reason": run.reason,
        "started_by": run.created_by,
        "started_at": _iso_epoch(run.created_at),
        "gates": results.get("gates", []),
        "evaluation": results.get("evaluation"),
        "package": results.get("package"),
        "canary_rollout": run.rollout_id,
    }


def _training(
    session: Session, version: ModelVersion, run: PipelineRun | None
) -> dict[str, Any] | None:
    if version.training_run_id is None:
        return None
    training = session.get(TrainingRun, version.training_run_id)
    if training is None:
        return {"training_run": version.training_run_id, "missing": True}
    config, metrics = training.config or {}, training.metrics or {}
    rounds = metrics.get("rounds")
    participants = (run.results or {}).get("participants") if run is not None else None
    return {
        "training_run": training.id,
        "task": training.task,
        "kind": training.kind,
        "status": training.status,
        "rounds": len(rounds) if isinstance(rounds, list) else config.get("rounds"),
        "data_fingerprint": training.data_fingerprint,
        "code_version": training.code_version,
        "secure_aggregation": bool(config.get("secagg_resolved", config.get("secagg", False))),
        "privacy": config.get("privacy"),
        "weights_sha256": training.weights_sha256,
        "participants": participants,
        "started_at": _iso(training.started_at),
        "finished_at": _iso(training.finished_at),
    }


def _signing(tuf_dir: Path | None, targets_version: int, target: str) -> dict[str, Any]:
    """Who signed the targets metadata version that added `target`, from the repository."""
    found: dict[str, Any] = {"targets_version": targets_version}
    if tuf_dir is None:
        return found
    repository = TufRepository(tuf_dir)
    path = repository.metadata_dir / f"{targets_version}.targets.json"
    try:
        targets = Metadata.from_bytes(path.read_bytes())
        root = Metadata.from_bytes(repository.root_bytes())
    except (OSError, ValueError) as err:
        return {**found, "error": f"cannot read {path.name}: {err}"}
    if not isinstance(targets.signed, Targets) or not isinstance(root.signed, Root):
        return {**found, "error": f"{path.name} or root.json holds the wrong metadata type"}
    role = root.signed.roles["targets"]
    signed_by = sorted(targets.signatures)
    entry = targets.signed.targets.get(target)
    return {
        **found,
        "signed_by_keyids": signed_by,
        "targets_expires": _iso(targets.signed.expires),
        "target_sha256": entry.hashes.get("sha256") if entry is not None else None,
        "target_length": entry.length if entry is not None else None,
        "root_version": root.signed.version,
        "root_targets_keyids": sorted(role.keyids),
        "root_targets_threshold": role.threshold,
        "keys_still_trusted": [k for k in signed_by if k in role.keyids],
    }


def _rollouts(session: Session, target: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(Rollout).where(Rollout.target == target).order_by(Rollout.id))
    return [
        {"rollout": r.id, "status": r.status, "group": r.group_name, "created_by": r.created_by,
         "created_at": _iso(r.created_at), "finished_at": _iso_epoch(r.finished_at),
         "reason": r.reason}
        for r in rows
    ]


def release_chain(session: Session, name: str, tuf_dir: Path | None = None) -> dict[str, Any]:
    """Where the release `name` (target path or model:version) came from, step by step."""
    release = _resolve_release(session, name)
    version = session.get(ModelVersion, release.model_version_id)
    assert version is not None, "a release's model version is a foreign key"
    model = session.get(Model, version.model_id)
    run = _publishing_run(session, release.target_path, version)
    rollouts = _rollouts(session, release.target_path)
    return {
        "target": release.target_path,
        "released_at": _iso(release.created_at),
        "model_version": {
            "model": model.name if model is not None else None,
            "version": version.version,
            "format": version.format,
            "artifact_sha256": version.artifact_sha256,
            "size_bytes": version.size_bytes,
            "metrics": version.metrics or {},
            "data_fingerprint": version.data_fingerprint,
            "code_version": version.code_version,
            "registered_at": _iso(version.created_at),
        },
        "published_by": _publication(run),
        "training": _training(session, version, run),
        "signing": _signing(tuf_dir, release.targets_version, release.target_path),
        "approval": {
            "pipeline": _approval(run) if run is not None else None,
            "rollouts_created_by": sorted({r["created_by"] for r in rollouts}),
        },
        "trigger": dict(run.trigger) if run is not None else {"kind": "manual"},
        "rollouts": rollouts,
    }


def _chain_or_unregistered(
    session: Session, target: str | None, tuf_dir: Path | None
) -> dict[str, Any] | None:
    if target is None:
        return None
    try:
        return release_chain(session, target, tuf_dir)
    except NotFoundError:
        return {"target": target, "registered": False}


# A device's side ---------------------------------------------------------------------------


def _device_rollouts(session: Session, device_id: str) -> list[tuple[RolloutDevice, Rollout]]:
    rows = session.execute(
        select(RolloutDevice, Rollout).join(Rollout, RolloutDevice.rollout_id == Rollout.id)
        .where(RolloutDevice.device_id == device_id).order_by(Rollout.id)
    ).all()
    return [(assignment, rollout) for assignment, rollout in rows]


def _assignment(assignment: RolloutDevice, rollout: Rollout) -> dict[str, Any]:
    return {
        "rollout": rollout.id, "target": rollout.target, "rollout_status": rollout.status,
        "created_by": rollout.created_by, "wave": assignment.wave + 1,  # 1-based, as the API
        "phase": assignment.phase,
        "sent_at": _iso_epoch(assignment.sent_at),
        "resolved_at": _iso_epoch(assignment.resolved_at),
        "rollback_sent_at": _iso_epoch(assignment.rollback_sent_at),
        "reason": assignment.reason,
    }


def _arrival(
    assignments: Sequence[tuple[RolloutDevice, Rollout]], interval: Interval
) -> dict[str, Any] | None:
    """The command that put `interval.release` on the device: the last update to it, or
    rollback from another release, sent before the interval began."""
    since = interval.since.timestamp()
    candidates: list[tuple[float, str, RolloutDevice, Rollout]] = []
    for assignment, rollout in assignments:
        if rollout.target == interval.release and assignment.sent_at is not None:
            candidates.append((assignment.sent_at, "update", assignment, rollout))
        if rollout.target != interval.release and assignment.rollback_sent_at is not None:
            candidates.append((assignment.rollback_sent_at, "rollback", assignment, rollout))
    sent = [c for c in candidates if c[0] <= since]
    if not sent:
        return None
    _at, how, assignment, rollout = max(sent, key=lambda c: c[0])
    return {"how": how, **_assignment(assignment, rollout)}


def device_lineage(
    session: Session, device_id: str, at: datetime, tuf_dir: Path | None = None
) -> dict[str, Any]:
    """What `device_id` ran at `at` (aware), since and until when, and that release's chain.

    NotFoundError for an unknown device. `status` says how sure the answer is: "ran" (from
    the status history), "not_seen_yet" (before the device first appeared), or "unknown" (seen,
    but its recorded history starts later)."""
    if at.tzinfo is None:
        raise ConfigError("`at` must be timezone-aware")
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"unknown device {device_id!r}")
    first_seen = as_utc(device.first_seen_at)
    answer: dict[str, Any] = {"device_id": device_id, "at": _iso(at),
                              "first_seen_at": _iso(first_seen)}
    if at < first_seen:
        return {**answer, "status": "not_seen_yet", "release": None,
                "detail": f"device {device_id} was first seen at {_iso(first_seen)}"}
    points = _points(session, device_id)
    intervals = release_intervals(points, _current_point(device))
    interval = next((i for i in intervals if i.covers(at)), None)
    if interval is None:
        start = _iso(intervals[0].since) if intervals else None
        return {**answer, "status": "unknown", "release": None,
                "detail": f"no status of {device_id} recorded at or before {_iso(at)}; "
                          f"its history starts at {start}"}
    status = _status_at(points, at)
    assignments = _device_rollouts(session, device_id)
    return {
        **answer,
        "status": "ran",
        "release": interval.release,
        "since": _iso(interval.since),
        "until": _iso(interval.until),
        "online": status.online if status is not None else device.online,
        "state": status.state if status is not None else device.state,
        "arrived_by": _arrival(assignments, interval),
        "rollouts": [_assignment(a, r) for a, r in assignments if r.target == interval.release],
        "lineage": _chain_or_unregistered(session, interval.release, tuf_dir),
        "history": [i.to_json() for i in intervals],
    }


def release_lineage(session: Session, name: str, tuf_dir: Path | None = None) -> dict[str, Any]:
    """The chain of the release `name` plus every device that had it and when."""
    chain = release_chain(session, name, tuf_dir)
    target = chain["target"]
    device_ids = set(session.scalars(
        select(DeviceEvent.device_id).where(DeviceEvent.release == target).distinct()
    )) | set(session.scalars(select(Device.device_id).where(Device.release == target)))
    devices = []
    for device_id in sorted(device_ids):
        device = session.get(Device, device_id)
        current = _current_point(device) if device is not None else None
        spans = [i.to_json() for i in release_intervals(_points(session, device_id), current)
                 if i.release == target]
        devices.append({"device_id": device_id, "intervals": spans})
    return {**chain, "devices": devices}
