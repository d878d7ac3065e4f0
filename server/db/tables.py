"""Registry and fleet tables (SQLAlchemy 2.0), and the engine/session factory.

The schema is created and upgraded only by Alembic migrations (server/db/migrations);
these classes describe it for the ORM. SQLite (WAL) by default, PostgreSQL by URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # "centralized" | "federated"
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="running")
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str | None] = mapped_column(String(64))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(back_populates="model")


class Artifact(Base):
    """A file in the content-addressed store (`artifacts/sha256/<hash>`)."""

    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """One version of a model in one format (fp32 or int8), with metrics and lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", "format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))  # "fp32" | "int8"
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    release_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")


class Release(Base):
    """A model version published as a signed TUF target."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), unique=True)
    target_path: Mapped[str] = mapped_column(String(300), unique=True)
    targets_version: Mapped[int] = mapped_column(Integer)  # targets.json version that added it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Withdrawn (migration 0008): removed from the signed targets, never rolled out again.
    withdrawn_at: Mapped[datetime | None] = mapped_column()
    withdrawn_reason: Mapped[str | None] = mapped_column(Text)


class Device(Base):
    """Fleet inventory: one row per device, updated from status and telemetry."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer)
    release: Mapped[str | None] = mapped_column(String(300))
    target: Mapped[str | None] = mapped_column(String(300))  # update in progress or last tried
    reason: Mapped[str | None] = mapped_column(Text)
    agent_version: Mapped[str | None] = mapped_column(String(32))
    telemetry_messages: Mapped[int] = mapped_column(Integer, default=0)
    last_status_at: Mapped[datetime | None] = mapped_column()
    last_seen_at: Mapped[datetime | None] = mapped_column()
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceTransfer(Base):
    """How a release last reached a device (migration 0009): the `transfer` of its status,
    latest wins. Rollout summaries sum `bytes_received` and `full_bytes` over a rollout's
    devices."""

    __tablename__ = "device_transfers"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(300), primary_key=True)
    how: Mapped[str] = mapped_column(String(16))  # "full" | "delta" | "compressed" | "cached"
    bytes_received: Mapped[int] = mapped_column(BigInteger)
    full_bytes: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class IssuedCertificate(Base):
    """A device certificate the fleet CA signed (migration 0006): enrollment and renewal
    record each one; `edgeops fleet revoke` sets `revoked_at` and the CRL lists it.
    `serial` is lowercase hex (X.509 serials do not fit a BIGINT)."""

    __tablename__ = "issued_certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    key_sha256: Mapped[str] = mapped_column(String(64))  # of the DER SubjectPublicKeyInfo
    issued_at: Mapped[datetime] = mapped_column()
    not_after: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    renewed_from: Mapped[str | None] = mapped_column(String(40))


class TelemetryRecord(Base):
    """One telemetry batch as received; `message_id` makes ingest idempotent."""

    __tablename__ = "telemetry"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


# Operator side (migration 0002): tokens, audit log, device labels, rollouts -----------------


class ApiToken(Base):
    """A bearer token for the REST API and console; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "viewer" | "operator" | "admin"
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    # Who the token belongs to (migration 0005): a named person, or a service (a program;
    # services never approve). `owner` is the person's name or the service's description.
    kind: Mapped[str] = mapped_column(String(16), default="person")  # "person" | "service"
    owner: Mapped[str | None] = mapped_column(String(128))


class ConsoleSession(Base):
    """A console login (migration 0007): the cookie carries a random secret, only its SHA-256
    is stored; `token_sha256` is the API token it was exchanged for, so revoking that token
    (or rotating the admin token) ends the session."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """One action: a mutating API or console call, or one the server took on its own (a
    pipeline run's step, a rollout's verdict), with who, what, when and the outcome.

    Append-only and hash-chained (migration 0005): `entry_hash` covers the entry's fields and
    `prev_hash`, the previous entry's `entry_hash` (server.governance)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))  # HTTP method, or e.g. "pipeline.promote"
    resource: Mapped[str] = mapped_column(String(300))  # path, or the kind of thing acted on
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: not an HTTP call
    outcome: Mapped[str] = mapped_column(String(16))  # "ok" | "denied" | "refused" | "error"
    detail: Mapped[str | None] = mapped_column(Text)
    target: Mapped[str | None] = mapped_column(String(300))  # what was acted on
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    entry_hash: Mapped[str | None] = mapped_column(String(64), unique=True)


class AuditAnchor(Base):
    """The audit chain's head at a moment, signed by the server's audit key: an entry
    deleted from the tail after an anchor shows as a head that no longer matches."""

    __tablename__ = "audit_anchors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    entry_id: Mapped[int] = mapped_column(Integer)  # the last entry covered
    head_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)  # hex


class DeviceLabel(Base):
    """The group and tags an operator gave a device (rollout target selection)."""

    __tablename__ = "device_labels"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64), default="default", index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceEvent(Base):
    """A change of a device's reported status, as the server observed it (status history)."""

    __tablename__ = "device_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    online: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str | None] = mapped_column(String(32))
    release: Mapped[str | None] = mapped_column(String(300))
    target: Mapped[str | None] = mapped_column(String(300))
    reason: Mapped[str | None] = mapped_column(Text)


class Rollout(Base):
    """A staged rollout of one release to a group of devices (server.rollouts)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(300))  # the release's TUF target path
    group_name: Mapped[str | None] = mapped_column(String(64))  # None: the whole fleet
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    # The group key while active, NULL once finished: a unique index allows one active
    # rollout per group, race-free on SQLite and PostgreSQL.
    active_scope: Mapped[str | None] = mapped_column(String(64), unique=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float | None] = mapped_column(Float)
    soak_started_at: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=0)  # optimistic concurrency
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # Waves the rollout may start (None: all). A pipeline's canary releases one wave at a
    # time, after judging the last one against its control cohort (migration 0004).
    released_waves: Mapped[int | None] = mapped_column(Integer)


class RolloutDevice(Base):
    """One device's assignment in a rollout: its wave, phase and the commands sent to it.

    Written (and committed) before a command is published, so a restarted server never
    updates a device twice."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    command_id: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[float | None] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float)
    rollback_command_id: Mapped[str | None] = mapped_column(String(64))
    rollback_sent_at: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`; SQLite gets WAL, a busy timeout and foreign keys."""
    is_sqlite = database_url.startswith("sqlite")
    connect_args: dict[str, Any] = {"timeout": 30, "check_same_thread": False} if is_sqlite else {}
    engine = create_engine(database_url, connect_args=connect_args, pool_pre_ping=not is_sqlite)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


# Fleet monitor (migration 0003): window scores, events, cohort state, lease ------------------


class MonitorWindowScore(Base):
    """Every score of one (time window, cohort), drifted or not (kept for governance)."""

    __tablename__ = "monitor_windows"
    __table_args__ = (UniqueConstraint("cohort", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(400), index=True)
    release: Mapped[str] = mapped_column(String(300))
    group_name: Mapped[str | None] = mapped_column(String(64))  # None: the whole fleet
    window_start: Mapped[float] = mapped_column(Float, index=True)
    window_end: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    devices: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))  # "ok" | "drift" | "inconclusive"
    drifted_share: Mapped[float] = mapped_column(Float)
    max_psi: Mapped[float | None] = mapped_column(Float)
    prior_shift: Mapped[float | None] = mapped_column(Float)
    estimated_accuracy: Mapped[float | None] = mapped_column(Float)
    naive_accuracy: Mapped[float | None] = mapped_column(Float)
    realised_accuracy: Mapped[float | None] = mapped_column(Float)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)  # per statistic, per feature; p-values
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorEventRecord(Base):
    """A monitor verdict the continuous-training loop subscribes to, with its evidence."""

    __tablename__ = "monitor_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    cohort: Mapped[str] = mapped_column(String(400), index=True)
    release: Mapped[str] = mapped_column(String(300))
    window_end: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorCohortState(Base):
    """The confirmation state (CUSUM, alarms) of one cohort between windows."""

    __tablename__ = "monitor_cohort_state"

    cohort: Mapped[str] = mapped_column(String(400), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorLease(Base):
    """The single-monitor lease (SQLite; PostgreSQL also takes an advisory lock) and the
    watermark: the end of the last time window scored."""

    __tablename__ = "monitor_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    watermark: Mapped[float | None] = mapped_column(Float)


# Continuous-delivery pipeline (migration 0004): runs, their timeline, model aliases ---------


class ModelAlias(Base):
    """A named pointer at one version of a model: `champion` (what the fleet should run) and
    `challenger` (the candidate a pipeline run is canarying). Replaces stages."""

    __tablename__ = "model_aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineRun(Base):
    """One pass of the loop for a model: trigger, training, gates, release, canary, verdict.

    `active_model` is the model while the run is in flight and NULL once it ended, so the
    unique constraint keeps at most one run in flight per model (as rollouts' active_scope).
    `results` accumulates every step's inputs and outputs (the governance record's source)."""

    __tablename__ = "pipeline_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(24))
    active_model: Mapped[str | None] = mapped_column(String(64), unique=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    trigger: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    champion_version: Mapped[int | None] = mapped_column(Integer)
    training_attempts: Mapped[int] = mapped_column(Integer, default=0)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    candidate_version: Mapped[int | None] = mapped_column(Integer)
    candidate_target: Mapped[str | None] = mapped_column(String(300))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"))
    approved_by: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=0)  # optimistic concurrency
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    state_entered_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class PipelineStep(Base):
    """The timeline of a run: every state it entered and every decision, with its evidence."""

    __tablename__ = "pipeline_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(24))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
