"""A model card per release: the part known at signing, and the deployment appended later.

    card = signed_card(session, source)          # publish: before the TUF target is signed
    validate_card(card)                          # against schemas/model_card.schema.json
    signed_part(session, model, version)         # the server's copy of what was signed
    deployment_record(session, model, version)   # approvals, waves, canary, verdict, devices
    full_card(session, model, version)           # signed part + {"deployment": ...}
    resolve_release(session, "digits/3/model.int8.onnx" | "digits", version)

The card is JSON with Model Card Toolkit field names where they fit (`model_details`,
`model_parameters`, `quantitative_analysis`, `considerations`) and an `edgeops` extension
(schemas/model_card.schema.json documents every field). Its sources: the package's
report.json, the training run (TrainingRun.config / metrics) and, for a release the
pipeline made, the pipeline run trained in that training run (trigger, participants,
evaluation, gates, policy). A manual publish gets a card with what is known and says
"manual publish". Data appears only as fingerprints and device counts.

The signed part goes into ReleaseInfo.model_card, so it is covered by the targets
signature and a device can show what it runs and why; it is capped at
MODEL_CARD_MAX_BYTES of compact JSON (trigger evidence, then per-class detail, is left
out first, and `edgeops.limits.omitted` says so). The deployment part changes as the
release rolls out and is never signed: it is read from the rollouts of the release's
target, the pipeline run's timeline and the audit entries whose target is the release.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError, NotFoundError
from edgeops.schemas import MODEL_CARD_MAX_BYTES, ModelFormat, ReleaseInfo, model_card_json
from server.db.tables import (
    AuditEntry,
    Device,
    Model,
    ModelVersion,
    PipelineRun,
    Release,
    Rollout,
    RolloutDevice,
    TrainingRun,
    as_utc,
)
from server.pipeline import store as pipeline_store
from server.pipeline.gates import GATES, CandidateMetrics, evaluate_gates
from server.pipeline.machine import ACTIVE_STATUSES
from server.pipeline.policy import ReleasePolicy
from server.registry.aliases import CHAMPION, get_alias
from server.rollouts.summary import DONE_PHASES, summarize

__all__ = [
    "CARD_SCHEMA_VERSION",
    "SCHEMA_PATH",
    "CardSource",
    "deployment_record",
    "full_card",
    "resolve_release",
    "signed_card",
    "signed_part",
    "validate_card",
]

logger = logging.getLogger(__name__)

CARD_SCHEMA_VERSION = "1"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "model_card.schema.json"
MANUAL_PUBLISH = "manual publish"
_STAGE = {gate.name: gate.stage for gate in GATES}
# Compaction of evidence copied into the card: nesting, items per list/object, text length.
_MAX_DEPTH, _MAX_ITEMS, _MAX_TEXT = 3, 12, 200
AUDIT_ENTRIES_SHOWN = 200


@dataclass(frozen=True)
class CardSource:
    """What publishing knows of a release when it signs it (the package and registry)."""

    model: str
    task: str
    version: int
    format: ModelFormat
    target_path: str
    artifact_sha256: str
    size_bytes: int
    release_info: ReleaseInfo
    released_at: datetime
    report: Mapping[str, Any] = field(default_factory=dict)  # the package's report.json
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the released format's metrics
    data_fingerprint: str | None = None
    code_version: str | None = None
    training_run_id: int | None = None
    parent_version: int | None = None


# The signed part --------------------------------------------------------------------------


def signed_card(session: Session, source: CardSource) -> dict[str, Any]:
    """The card of `source`'s release, valid against the schema and within the size cap.

    ConfigError if it cannot be made valid (a bug in the card or a broken report)."""
    training = session.get(TrainingRun, source.training_run_id) if source.training_run_id else None
    run = _pipeline_run(session, training)
    policy = _policy(run)
    card = _assemble(source, training, run, policy, _task_text(source.task))
    card = _fit(card)
    validate_card(card)
    return card


def _pipeline_run(session: Session, training: TrainingRun | None) -> PipelineRun | None:
    """The pipeline run that trained `training` (its training_run_id, or the tag the
    training job wrote into the run's config); None for a manual release."""
    if training is None:
        return None
    run = session.scalar(select(PipelineRun).where(PipelineRun.training_run_id == training.id)
                         .order_by(PipelineRun.id.desc()).limit(1))
    tagged = (training.config or {}).get("pipeline_run_id")
    if run is None and isinstance(tagged, int):
        run = session.get(PipelineRun, tagged)
    return run


def _policy(run: PipelineRun | None) -> ReleasePolicy | None:
    if run is None:
        return None
    try:
        return ReleasePolicy.from_json(run.policy)
    except ConfigError as err:
        logger.warning("pipeline run %d: stored policy unreadable for its card: %s", run.id, err)
        return None


@dataclass(frozen=True)
class _TaskText:
    description: str
    metadata: Mapping[str, Any]


def _task_text(task_spec: str) -> _TaskText:
    """The task's description and metadata (`intended_use`, `limitations`, `owners`,
    `license`, `architecture`); empty if the task cannot be loaded here."""
    from edgeops.errors import TaskError
    from edgeops.tasks import load_task

    try:
        task = load_task(task_spec)
    except TaskError as err:
        logger.warning("model card: task %s not loadable (%s); no task text", task_spec, err)
        return _TaskText("", {})
    return _TaskText(task.description, dict(task.metadata))


def _assemble(source: CardSource, training: TrainingRun | None, run: PipelineRun | None,
              policy: ReleasePolicy | None, task: _TaskText) -> dict[str, Any]:
    report = source.report
    results = dict(run.results or {}) if run is not None else {}
    gates = _gates(results, policy, report)
    int8 = _int8(report, source.metrics)
    metrics = {
        "heldout": _compact(results.get("evaluation", {}).get("heldout")),
        "fleet": _fleet(training),
        "package": {k: v for k, v in source.metrics.items() if _is_number(v)},
    }
    extension: dict[str, Any] = {
        "release": {
            "model": source.model, "version": source.version, "format": source.format,
            "target": source.target_path, "artifact_sha256": source.artifact_sha256,
            "size_bytes": source.size_bytes, "task": source.task,
            "required_opset": source.release_info.required_opset,
            "parent_version": source.parent_version,
        },
        "origin": (
            {"kind": "pipeline", "summary": f"pipeline run {run.id}", "pipeline_run_id": run.id,
             "started_by": run.created_by}
            if run is not None else
            {"kind": "manual", "summary": MANUAL_PUBLISH, "pipeline_run_id": None,
             "started_by": None}
        ),
        "data": _data(source, training, results),
        "training": _training(training, run),
        "code_version": source.code_version,
        "checkpoint_sha256": _text((report.get("lineage") or {}).get("checkpoint_sha256")),
        "trigger": _compact(run.trigger) if run is not None else {"kind": MANUAL_PUBLISH},
        "champion_version": run.champion_version if run is not None else None,
        "gates": gates,
        "metrics": metrics,
        "int8": int8,
        "policy": policy.to_json() if policy is not None else None,
        "limits": {"max_bytes": MODEL_CARD_MAX_BYTES, "omitted": []},
    }
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "model_details": _details(source, run, task),
        "model_parameters": _parameters(source, training, task),
        "quantitative_analysis": {"performance_metrics": _performance(int8, metrics, gates)},
        "considerations": _considerations(source, training, run, policy, task, int8),
        "edgeops": extension,
    }


def _details(source: CardSource, run: PipelineRun | None, task: _TaskText) -> dict[str, Any]:
    if run is not None:
        diff = (f"retrained from v{run.champion_version}" if run.champion_version is not None
                else "trained") + f" by pipeline run {run.id} ({_trigger_text(run.trigger)})"
    else:
        diff = MANUAL_PUBLISH
    details: dict[str, Any] = {
        "name": source.model,
        "overview": task.description or f"{source.model} ({source.task})",
        "version": {"name": str(source.version),
                    "date": source.released_at.astimezone(UTC).isoformat(), "diff": diff},
        "owners": [
            {k: str(v) for k, v in owner.items() if k in ("name", "contact", "role")}
            for owner in task.metadata.get("owners", []) if isinstance(owner, Mapping)
        ],
        "references": [{"reference": f"tuf-target:{source.target_path}"},
                       {"reference": f"sha256:{source.artifact_sha256}"}],
    }
    license_id = task.metadata.get("license")
    if isinstance(license_id, str):
        details["licenses"] = [{"identifier": license_id}]
    return details


def _trigger_text(trigger: Mapping[str, Any]) -> str:
    kind = trigger.get("kind", "manual")
    if kind == "event":
        return f"{trigger.get('event')} on {trigger.get('cohort')}"
    return "the schedule" if kind == "schedule" else f"{kind} trigger"


def _parameters(source: CardSource, training: TrainingRun | None,
                task: _TaskText) -> dict[str, Any]:
    info = source.release_info
    shape = ", ".join("N" if d is None else str(d) for d in info.input.shape)
    opset = f", opset {info.required_opset}" if info.required_opset else ""
    architecture = task.metadata.get("architecture")
    data = [{"name": "held-out split",
             "description": f"the task's fixed test split ({source.task}), on the server"}]
    if training is not None:
        data.insert(0, {"name": "training data",
                        "description": f"{training.kind} training run {training.id}; "
                        f"fingerprint {training.data_fingerprint or source.data_fingerprint}; "
                        "device data never left the devices" if training.kind == "federated"
                        else f"training run {training.id}"})
    elif source.data_fingerprint:
        data.insert(0, {"name": "training data",
                        "description": f"fingerprint {source.data_fingerprint}"})
    return {
        "model_architecture": (str(architecture) if architecture else
                               f"ONNX classifier ({source.format}{opset}), "
                               f"{info.num_classes} classes"),
        "data": data,
        "input_format": f"{info.input.name}: {info.input.dtype} [{shape}], values in "
                        f"[{info.input.min_value:g}, {info.input.max_value:g}]",
        "output_format": f"{info.output_name}: float32 [N, {info.num_classes}], "
                         "one score per class",
    }


def _data(source: CardSource, training: TrainingRun | None,
          results: Mapping[str, Any]) -> dict[str, Any]:
    participants = results.get("participants") or {}
    config = dict(training.config or {}) if training is not None else {}
    metrics = dict(training.metrics or {}) if training is not None else {}
    cohorts = participants.get("cohorts")
    return {
        "fingerprint": source.data_fingerprint or (training.data_fingerprint if training else None),
        "devices": _int(participants.get("devices", config.get("num_clients"))),
        "cohorts": ({str(k): int(v) for k, v in cohorts.items()} if isinstance(cohorts, dict)
                    else {}),
        "scope": _text(participants.get("scope")),
        "feedback_examples": _int(config.get("feedback_examples")),
        "drift_reference_examples": _int(metrics.get("drift_reference_examples")),
    }


def _training(training: TrainingRun | None, run: PipelineRun | None) -> dict[str, Any] | None:
    if training is None:
        return None
    config = dict(training.config or {})
    strategy = config.get("strategy")
    secagg = config.get("secagg_resolved", config.get("secagg"))
    dp = config.get("privacy") or config.get("dp")
    warm = run.champion_version if run is not None and config.get("initial_weights") else None
    return {
        "training_run_id": training.id,
        "kind": training.kind,
        "rounds": _int(config.get("num_rounds")),
        "rounds_aggregated": _int((training.metrics or {}).get("rounds_aggregated")),
        "local_epochs": _int(config.get("local_epochs")),
        "learning_rate": config.get("learning_rate") if _is_number(
            config.get("learning_rate")) else None,
        "strategy": _text(strategy.get("name") if isinstance(strategy, dict) else strategy),
        "warm_start_from_version": warm,
        "secagg": _compact(secagg) if isinstance(secagg, dict) else None,
        "dp": _compact(dp) if isinstance(dp, dict) else None,
        "code_version": training.code_version,
        "weights_sha256": training.weights_sha256,
        "started_at": as_utc(training.started_at).isoformat(),
        "finished_at": as_utc(training.finished_at).isoformat() if training.finished_at else None,
    }


def _privacy_text(privacy: object) -> str:
    """The DP line of the card: the (epsilon, delta) the run spent, when it was accounted."""
    spent = privacy if isinstance(privacy, dict) else {}
    if not _is_number(spent.get("epsilon")) or not _is_number(spent.get("delta")):
        return "differential privacy (central Gaussian noise on clipped updates)"
    return (f"differential privacy: (epsilon {spent['epsilon']:g}, delta {spent['delta']:g}) "
            f"over {spent.get('rounds')} rounds, noise multiplier {spent.get('noise_multiplier')}, "
            f"client sampling rate {spent.get('sampling_rate')} ({spent.get('accountant')})")


def _fleet(training: TrainingRun | None) -> dict[str, Any] | None:
    """The federated evaluation of candidate and champion: per class and per cohort."""
    fleet = (training.metrics or {}).get("fleet_evaluation") if training is not None else None
    if not isinstance(fleet, dict):
        return None
    keep = ("examples", "accuracy", "class_recall", "cohort_accuracy", "cohort_examples")
    return {name: {k: entry.get(k) for k in keep}
            for name, entry in (fleet.get("weight_sets") or {}).items() if isinstance(entry, dict)}


def _gates(results: Mapping[str, Any], policy: ReleasePolicy | None,
           report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every gate with threshold, baseline and result. The evaluation gates are in the
    run's results; the packaging gates are decided on the package's own figures in the
    same step that publishes, so they are recomputed here exactly as the runner does."""
    recorded = [dict(g) for g in results.get("gates", []) if isinstance(g, Mapping)]
    names = {g.get("name") for g in recorded}
    if policy is not None:
        accuracy = report.get("accuracy") or {}
        latency = report.get("p50_latency_us") or {}
        drop = (
            (accuracy["fp32"] - accuracy["int8"]) * 100
            if _is_number(accuracy.get("fp32")) and _is_number(accuracy.get("int8")) else None
        )
        candidate = CandidateMetrics(
            int8_drop_pp=drop,
            int8_agreement=report.get("agreement") if _is_number(report.get("agreement")) else None,
            p50_latency_us=latency.get("int8") if _is_number(latency.get("int8")) else None,
        )
        recorded += [r.to_json() for r in evaluate_gates(policy.gates, candidate, None,
                                                          stage="packaging")
                     if r.name not in names]
    return [{**g, "stage": _STAGE.get(str(g.get("name")), "evaluation")} for g in recorded]


def _int8(report: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    accuracy = report.get("accuracy") or {}
    fp32: Any = accuracy.get("fp32", metrics.get("fp32_accuracy"))
    int8: Any = accuracy.get("int8", metrics.get("int8_accuracy"))
    quantization = report.get("quantization") or {}
    drop = (fp32 - int8) * 100 if _is_number(fp32) and _is_number(int8) else None
    return {
        "quantization": _text(quantization.get("method")),
        "accuracy_budget_pp": quantization.get("accuracy_budget_pp"),
        "fp32_accuracy": fp32 if _is_number(fp32) else None,
        "int8_accuracy": int8 if _is_number(int8) else None,
        "accuracy_drop_pp": drop,
        "agreement": report.get("agreement", metrics.get("agreement")),
        "p50_latency_us": report.get("p50_latency_us"),
        "sizes_bytes": report.get("sizes_bytes"),
    }


def _performance(int8: Mapping[str, Any], metrics: Mapping[str, Any],
                 gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MCT performance_metrics: one row per measured number and slice, with the gate that
    bounded it (threshold and outcome) where there is one."""
    by_metric: dict[str, dict[str, Any]] = {}
    for gate in gates:
        by_metric.setdefault(str(gate.get("metric")), gate)
    rows: list[dict[str, Any]] = []

    def add(kind: str, value: Any, slice_: str, gate: str | None = None) -> None:
        if not _is_number(value):
            return
        row: dict[str, Any] = {"type": kind, "value": value, "slice": slice_}
        judged = by_metric.get(gate) if gate else None
        if judged is not None and judged.get("kind") == "value":
            row.update(threshold=judged["threshold"], passed=bool(judged["passed"]))
        rows.append(row)

    add("accuracy", int8.get("int8_accuracy"), "held-out split, int8 (ONNX)")
    add("accuracy", int8.get("fp32_accuracy"), "held-out split, fp32 (ONNX)")
    add("accuracy_drop_pp", int8.get("accuracy_drop_pp"), "held-out split, fp32 - int8",
        "int8_drop_pp")
    add("agreement", int8.get("agreement"), "held-out split, int8 vs fp32 top-1", "int8_agreement")
    latency = int8.get("p50_latency_us") or {}
    add("p50_latency_us", latency.get("int8"), "int8, 1 sample, 1 thread", "p50_latency_us")
    add("p50_latency_us", latency.get("fp32"), "fp32, 1 sample, 1 thread")
    heldout = (metrics.get("heldout") or {}).get("candidate") or {}
    add("accuracy", heldout.get("accuracy"), "held-out split, candidate (server)",
        "heldout_accuracy")
    candidate = (metrics.get("fleet") or {}).get("candidate") or {}
    add("accuracy", candidate.get("accuracy"), "fleet evaluation (devices' labelled data)",
        "fleet_accuracy")
    for cohort, value in sorted((candidate.get("cohort_accuracy") or {}).items()):
        add("accuracy", value, f"fleet evaluation, cohort {cohort}")
    recall = candidate.get("class_recall") or heldout.get("class_recall") or {}
    where = "fleet evaluation" if candidate.get("class_recall") else "held-out split"
    for cls, value in sorted(recall.items(), key=lambda kv: int(kv[0])):
        add("recall", value, f"{where}, class {cls}", "class_recall")
    if not rows:
        for name, value in sorted(metrics.get("package", {}).items()):
            add(name, value, "package report")
    return rows


def _considerations(source: CardSource, training: TrainingRun | None, run: PipelineRun | None,
                    policy: ReleasePolicy | None, task: _TaskText,
                    int8: Mapping[str, Any]) -> dict[str, Any]:
    meta = task.metadata
    use = meta.get("intended_use") or (
        f"On-device inference for the task {source.task}"
        + (f" ({task.description})" if task.description else "")
        + ", on inputs like those it was trained and evaluated on.")
    limitations = [str(item) for item in _as_list(meta.get("limitations"))]
    limitations.append(
        f"Inputs outside [{source.release_info.input.min_value:g}, "
        f"{source.release_info.input.max_value:g}] or unlike the training data are out of "
        "scope; the fleet monitor watches for such drift.")
    if _is_number(int8.get("agreement")) and source.format == "int8":
        limitations.append(f"int8 quantized: agrees with fp32 on {int8['agreement']:.2%} of the "
                           "held-out split.")
    if run is None:
        limitations.append("Manual publish: no release-policy gates were checked by EdgeOps; "
                           "the metrics are the package's own.")
    else:
        scope = (run.results or {}).get("participants", {}).get("cohorts") or {}
        if scope:
            limitations.append("Retrained on the devices of cohorts "
                               f"{', '.join(sorted(scope))}; other cohorts are judged only by "
                               "the canary.")
    config = dict(training.config or {}) if training is not None else {}
    if training is not None and training.kind == "federated":
        ethics = [{"name": "Raw device data never leaves the devices; the card holds "
                           "fingerprints and counts only.",
                   "mitigation_strategy": "federated training; telemetry carries sketches, "
                                          "not inputs"}]
    else:
        ethics = [{"name": "The training data is known here only by its fingerprint.",
                   "mitigation_strategy": "keep the data set that matches the fingerprint "
                                          "with the package that was published"}]
    if config.get("secagg_resolved") or config.get("secagg"):
        ethics.append({"name": "Individual device updates could reveal local data.",
                       "mitigation_strategy": "SecAgg+: the server sees only the sum of updates"})
    if config.get("privacy") or config.get("dp"):
        ethics.append({"name": "The aggregate model could memorise individual examples.",
                       "mitigation_strategy": _privacy_text(config.get("privacy"))})
    if policy is not None:
        ethics.append({"name": "An automatic retraining is a change to a deployed model.",
                       "mitigation_strategy": "planned and bounded in advance by the release "
                       f"policy (gates, approval {policy.approval.mode}, canary "
                       f"{'/'.join(f'{w:g}%' for w in policy.canary.step_weights)})"})
    return {
        "use_cases": [{"description": str(use)}],
        "limitations": [{"description": text} for text in limitations],
        "ethical_considerations": ethics,
    }


def _fit(card: dict[str, Any]) -> dict[str, Any]:
    """Leave out the bulkiest optional detail until the card fits MODEL_CARD_MAX_BYTES."""
    extension = card["edgeops"]
    steps = (
        ("edgeops.trigger.evidence", lambda: extension["trigger"].pop("evidence", None)),
        ("edgeops.metrics.fleet.champion", lambda: (extension["metrics"]["fleet"] or {})
         .pop("champion", None)),
        ("edgeops.metrics.heldout.champion", lambda: (extension["metrics"]["heldout"] or {})
         .pop("champion", None)),
        ("quantitative_analysis per-class rows", lambda: card["quantitative_analysis"].update(
            performance_metrics=[r for r in card["quantitative_analysis"]["performance_metrics"]
                                 if r["type"] != "recall"])),
        ("edgeops.policy", lambda: extension.update(policy=None)),
    )
    for name, drop in steps:
        if _size(card) <= MODEL_CARD_MAX_BYTES:
            break
        drop()
        extension["limits"]["omitted"].append(name)
    if _size(card) > MODEL_CARD_MAX_BYTES:
        raise ConfigError(f"the model card is {_size(card)} bytes even compacted, more than "
                          f"{MODEL_CARD_MAX_BYTES}")
    return card


def _size(card: Mapping[str, Any]) -> int:
    return len(model_card_json(dict(card)).encode())


# Validation -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    try:
        schema = json.loads(SCHEMA_PATH.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model card schema {SCHEMA_PATH} is unreadable: {err}") from err
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_card(card: Mapping[str, Any]) -> None:
    """ConfigError naming the first field that breaks schemas/model_card.schema.json."""
    errors = sorted(_validator().iter_errors(card), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"model card field {where}: {first.message}{more}")


# Reading it back --------------------------------------------------------------------------


def resolve_release(session: Session, release: str, version: int | None = None
                    ) -> tuple[str, int]:
    """(model, version) of `release`: a TUF target path (`digits/3/model.int8.onnx`), or a
    model name with `version`. NotFoundError if no such release exists."""
    if version is None:
        target = session.scalar(select(Release).where(Release.target_path == release))
        if target is None:
            raise NotFoundError(f"no release has the target path {release!r} "
                                "(give a target path, or a model and a version)")
        row = session.get(ModelVersion, target.model_version_id)
        assert row is not None  # a foreign key
        return row.model.name, row.version
    _release_rows(session, release, version)
    return release, version


def _release_rows(session: Session, model: str, version: int) -> tuple[Release, ModelVersion]:
    row = session.execute(
        select(Release, ModelVersion).join(ModelVersion, ModelVersion.id == Release.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == model, ModelVersion.version == version)
    ).first()
    if row is None:
        raise NotFoundError(f"model {model!r} has no release of version {version}")
    return row[0], row[1]


def signed_part(session: Session, model: str, version: int) -> tuple[dict[str, Any], bool]:
    """(the card, signed). The registry's copy of what the release's targets metadata
    signed; a release published before model cards gets one rebuilt from the registry
    (signed False)."""
    release, row = _release_rows(session, model, version)
    card = (row.release_info or {}).get("model_card")
    if isinstance(card, dict):
        return card, True
    info = ReleaseInfo.model_validate({**row.release_info, "model_card": None})
    source = CardSource(
        model=model, task=row.model.task, version=version, format=info.format,
        target_path=release.target_path, artifact_sha256=row.artifact_sha256,
        size_bytes=row.size_bytes, release_info=info, released_at=as_utc(release.created_at),
        metrics=dict(row.metrics or {}), data_fingerprint=row.data_fingerprint,
        code_version=row.code_version, training_run_id=row.training_run_id,
    )
    return signed_card(session, source), False


def deployment_record(session: Session, model: str, version: int,
                      now: datetime | None = None) -> dict[str, Any]:
    """What happened to the release after signing: approvals, rollouts and their waves,
    canary checks, the verdict (promotion or rollback), devices reached and running it, and
    the audit entries whose target is the release, one of its rollouts or its pipeline run
    (the first AUDIT_ENTRIES_SHOWN)."""
    release, row = _release_rows(session, model, version)
    target = release.target_path
    rollouts = list(session.scalars(select(Rollout).where(Rollout.target == target)
                                    .order_by(Rollout.id)))
    reached: set[str] = set()
    rollout_rows = []
    for rollout in rollouts:
        devices = list(session.scalars(select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id)))
        reached.update(d.device_id for d in devices if d.phase in DONE_PHASES)
        summary = summarize(rollout, devices)
        rollout_rows.append({
            "id": rollout.id, "status": rollout.status, "group": rollout.group_name,
            "reason": rollout.reason, "created_by": rollout.created_by,
            "created_at": as_utc(rollout.created_at).isoformat(),
            "finished_at": rollout.finished_at, "devices": summary.devices,
            "done": summary.done, "failed": summary.failed,
            "waves": [{"index": w.index, "devices": w.devices, "done": w.done,
                       "failed": w.failed, "status": w.status} for w in summary.waves],
        })
    run = _release_run(session, row)
    approvals: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    verdict: str | None = None
    if run is not None:
        verdict = "in progress" if run.status in ACTIVE_STATUSES else run.status
        steps = pipeline_store.steps(session, run.id)
        timeline = [{"at": s.at, "status": s.status, "message": s.message} for s in steps
                    if s.status in ("signed", "awaiting_approval", "canary", "promoted",
                                    "rolled_back", "refused")]
        for step in steps:
            detail = step.detail or {}
            if step.status == "awaiting_approval" and step.message.startswith("approved"):
                approvals.append({"at": step.at, "by": detail.get("actor") or run.approved_by,
                                  "how": "a person's approval"})
            elif step.status == "canary" and "automatically" in step.message:
                approvals.append({"at": step.at, "by": "policy", "how": "automatic (policy)"})
        checks = [_compact(c) for c in (run.results or {}).get("canary", {}).get("checks", [])]
    about = {target, f"release {target}", f"{model}/{version}", f"{model} v{version}",
             *(f"rollout {r.id}" for r in rollouts),
             *([f"pipeline run {run.id}"] if run is not None else [])}
    audit = [
        {"id": a.id, "at": as_utc(a.at).isoformat(), "actor": a.actor, "role": a.role,
         "action": a.action, "target": a.target, "outcome": a.outcome, "reason": a.reason,
         "detail": a.detail}
        for a in session.scalars(select(AuditEntry).where(AuditEntry.target.in_(sorted(about)))
                                 .order_by(AuditEntry.id).limit(AUDIT_ENTRIES_SHOWN))
    ]
    running = len(list(session.scalars(select(Device.device_id).where(Device.release == target))))
    return {
        "target": target,
        "as_of": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "verdict": verdict,
        "champion": get_alias(session, model, CHAMPION) == version,
        "approvals": approvals,
        "rollouts": rollout_rows,
        "canary_checks": checks,
        "timeline": timeline,
        "devices_reached": len(reached),
        "devices_running": running,
        "audit": audit,
    }


def _release_run(session: Session, row: ModelVersion) -> PipelineRun | None:
    """The pipeline run that made this version (candidate_version and training run)."""
    if row.training_run_id is None:
        return None
    return session.scalar(select(PipelineRun).where(
        PipelineRun.training_run_id == row.training_run_id).order_by(PipelineRun.id.desc())
        .limit(1))


def full_card(session: Session, model: str, version: int,
              now: datetime | None = None) -> dict[str, Any]:
    """The signed part, `signed` (False: rebuilt, the release predates cards) and the
    deployment record; valid against the schema."""
    card, signed = signed_part(session, model, version)
    full = {**card, "signed": signed, "deployment": deployment_record(session, model, version, now)}
    validate_card(full)
    return full


# Small helpers ----------------------------------------------------------------------------


def _compact(value: Any, depth: int = 0) -> Any:
    """A bounded copy of evidence: nesting, list/object sizes and text lengths capped."""
    if isinstance(value, Mapping):
        if depth >= _MAX_DEPTH:
            return f"({len(value)} fields left out)"
        items = list(value.items())
        out = {str(k): _compact(v, depth + 1) for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out["_omitted"] = len(items) - _MAX_ITEMS
        return out
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            return f"({len(value)} items left out)"
        kept = [_compact(v, depth + 1) for v in value[:_MAX_ITEMS]]
        return kept + ([f"({len(value) - _MAX_ITEMS} more)"] if len(value) > _MAX_ITEMS else [])
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[: _MAX_TEXT - 1] + "…"
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: Any) -> int | None:
    return int(value) if _is_number(value) else None


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
