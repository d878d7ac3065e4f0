"""Reproducibility: rebuild a release's fp32 and int8 artifacts and compare them with the
registered and signed ones.

    load_sources        what the registry recorded for a version: both formats, the release
                        and its signed hash, the training run's checkpoint, the recipe
    find_recipe         the quantization recipe: a report.json whose hashes prove it is this
                        release's (given, or the pipeline run's), else read off the int8 graph
    compare_artifact    one format: hashes first, then the golden inputs through both models
    reproduce_release   rebuild with the packaging function the server used, compare both
                        formats -> ReproductionReport

Each format gets one verdict, and the release the worst of its two:

    bit-identical                rebuilt sha256 == registered == signed == the stored bytes
    equivalent within tolerance  the bytes differ, but on the release's golden inputs the
                                 outputs are within the golden atol and pick the same class
    differs                      anything else, or the stored artifact (or the signed hash)
                                 no longer matches the registry's record

A version with no recorded training run (packaged from a model trained or loaded outside the
registry) has no checkpoint to rebuild from: ConfigError. A checkpoint whose bytes no longer
match the run's recorded hash is a TrustError. A code version other than the recorded one is
reported, not refused: whether it matters is what the comparison shows.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError, TrustError
from edgeops.packaging.quantize import (
    QUANTIZATION_METHODS,
    QuantizationConfig,
    QuantizationMethod,
)
from edgeops.packaging.source import file_sha256
from edgeops.schemas import ModelFormat, ReleaseInfo
from server.config.settings import ServerSettings
from server.db.tables import PipelineRun
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import FORMATS, Registry, ReleaseRecord, VersionRecord
from server.trust.repository import TufRepository

if TYPE_CHECKING:
    from edgeops.packaging import PackageReport
    from server.pipeline.steps import TrainedRun

__all__ = [
    "VERDICTS",
    "ArtifactComparison",
    "Recipe",
    "ReleaseSources",
    "ReproductionReport",
    "Verdict",
    "compare_artifact",
    "find_recipe",
    "load_sources",
    "recipe_from_report",
    "reproduce_release",
]

logger = logging.getLogger(__name__)

Verdict = Literal["bit-identical", "equivalent within tolerance", "differs"]
VERDICTS: tuple[Verdict, ...] = ("bit-identical", "equivalent within tolerance", "differs")
Progress = Callable[[str], None]

REPORT_FILE = "report.json"
# The rebuild must not be refused by the int8 gate: the gate decides nothing about the bytes.
_REBUILD_BUDGET_PP = 100.0
_DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})
_STATIC_OPS = frozenset({"QuantizeLinear", "QLinearMatMul", "QLinearConv"})


@dataclass(frozen=True)
class Recipe:
    """How the int8 model was made from the fp32 one, and where that was read."""

    quantization: QuantizationConfig
    calibration_source: str  # "task": the task's calibration split; "override": inputs given
    calibration_samples: int | None  # None: not recorded
    source: str  # e.g. "report.json of pipeline run 3", "inferred from the int8 artifact"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.quantization.describe(),
            "calibration_batch_size": self.quantization.calibration_batch_size,
            "calibration": {"source": self.calibration_source,
                            "samples": self.calibration_samples},
            "recorded_in": self.source,
        }


@dataclass(frozen=True)
class ReleaseSources:
    """Everything recorded about one model version that a rebuild needs."""

    model: str
    version: int
    task: str
    versions: dict[ModelFormat, VersionRecord]
    release: ReleaseRecord | None
    signed_sha256: dict[ModelFormat, str]  # the TUF target hash of the released format
    run: TrainedRun
    recipe: Recipe


@dataclass(frozen=True)
class ArtifactComparison:
    """One format: the four hashes, and the golden comparison when the bytes differ."""

    format: ModelFormat
    verdict: Verdict
    registered_sha256: str
    signed_sha256: str | None  # None: this format is not the signed target
    stored_sha256: str | None  # the bytes the artifact store serves; None: missing
    rebuilt_sha256: str
    atol: float
    golden_count: int
    max_abs_diff: float | None = None  # rebuilt vs stored outputs on the golden inputs
    argmax_agreement: float | None = None
    recorded_golden_max_abs_diff: float | None = None  # rebuilt vs the signed golden outputs
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, reasons=list(self.reasons))


@dataclass(frozen=True)
class ReproductionReport:
    model: str
    version: int
    release: str | None  # the TUF target path
    task: str
    training_run_id: int
    checkpoint_sha256: str
    recorded_code_version: str | None
    current_code_version: str
    recipe: Recipe
    artifacts: dict[ModelFormat, ArtifactComparison]
    notes: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> Verdict:
        return max((c.verdict for c in self.artifacts.values()), key=VERDICTS.index)

    @property
    def code_version_matches(self) -> bool:
        return self.recorded_code_version == self.current_code_version

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "release": self.release,
            "task": self.task,
            "verdict": self.verdict,
            "checkpoint": {"training_run_id": self.training_run_id,
                           "sha256": self.checkpoint_sha256},
            "code_version": {"recorded": self.recorded_code_version,
                             "current": self.current_code_version,
                             "matches": self.code_version_matches},
            "recipe": self.recipe.to_json(),
            "artifacts": {fmt: c.to_json() for fmt, c in self.artifacts.items()},
            "notes": list(self.notes),
        }


# ---- the recipe ------------------------------------------------------------------------


def recipe_from_report(report: Mapping[str, Any], source: str) -> Recipe:
    """The recipe report.json's `quantization` block records; ConfigError if malformed."""
    block = report.get("quantization")
    if not isinstance(block, Mapping):
        raise ConfigError(f"{source}: no 'quantization' object")
    method = block.get("method")
    if method not in QUANTIZATION_METHODS:
        raise ConfigError(f"{source}: quantization.method is {method!r}, not one of "
                          + ", ".join(QUANTIZATION_METHODS))
    flags = {name: block.get(name, True) for name in ("per_channel", "reduce_range")}
    if not all(isinstance(value, bool) for value in flags.values()):
        raise ConfigError(f"{source}: quantization.per_channel and reduce_range must be true/false")
    calibration = block.get("calibration") or {}
    samples = calibration.get("samples") if isinstance(calibration, Mapping) else None
    return Recipe(
        quantization=QuantizationConfig(method=method, **flags),
        calibration_source=str(calibration.get("source", "task")) if calibration else "task",
        calibration_samples=samples if isinstance(samples, int) else None,
        source=source,
    )


def _report_if_ours(path: Path, registered: Mapping[ModelFormat, str]) -> dict[str, Any] | None:
    """report.json at `path` if its sha256 block names exactly the registered files."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a readable report.json: {err}") from err
    hashes = report.get("sha256") if isinstance(report, dict) else None
    if not isinstance(hashes, dict) or any(hashes.get(f) != h for f, h in registered.items()):
        return None
    return report


def infer_recipe(int8_path: Path | None) -> Recipe:
    """The method read off the registered int8 graph's operators, the other settings at
    their defaults (the registry does not record them); with no intact int8 file to read
    (None), the server's default recipe."""
    import onnx

    if int8_path is None:
        return Recipe(quantization=QuantizationConfig(), calibration_source="task",
                      calibration_samples=None,
                      source="assumed: the server's default (no report, no intact int8 file)")
    try:
        ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    except Exception as err:  # onnx raises DecodeError and friends
        raise ConfigError(f"cannot read the registered int8 model {int8_path}: {err}") from err
    method: QuantizationMethod
    if ops & _DYNAMIC_OPS:
        method = "dynamic"
    elif ops & _STATIC_OPS:
        method = "static"
    else:
        raise ConfigError(f"the registered int8 model {int8_path} holds no quantized operator")
    return Recipe(
        quantization=QuantizationConfig(method=method),
        calibration_source="task",
        calibration_samples=None,
        source="inferred from the registered int8 artifact (method; other settings default)",
    )


def find_recipe(
    settings: ServerSettings,
    session_factory: sessionmaker,
    training_run_id: int,
    registered: Mapping[ModelFormat, str],
    int8_path: Path | None,
    report_path: Path | None = None,
) -> Recipe:
    """The recipe from `report_path` (refused, ConfigError, unless its hashes are this
    release's), else from the report.json of a pipeline run that packaged the training
    run, else inferred from `int8_path` (the registered int8 file, None if not intact)."""
    if report_path is not None:
        report = _report_if_ours(Path(report_path), registered)
        if report is None:
            raise ConfigError(f"{report_path} is not this release's report: its sha256 block "
                              "does not name the registered fp32 and int8 files")
        return recipe_from_report(report, f"{report_path}")
    with session_factory() as session:
        run_ids = session.scalars(select(PipelineRun.id)
                                  .where(PipelineRun.training_run_id == training_run_id)
                                  .order_by(PipelineRun.id)).all()
    for run_id in run_ids:
        candidate = settings.pipeline_dir / str(run_id) / "package" / REPORT_FILE
        report = _report_if_ours(candidate, registered) if candidate.is_file() else None
        if report is not None:
            return recipe_from_report(report, f"report.json of pipeline run {run_id}")
    return infer_recipe(int8_path)


# ---- the records -----------------------------------------------------------------------


def load_sources(
    settings: ServerSettings,
    session_factory: sessionmaker,
    model: str,
    version: int,
    report_path: Path | None = None,
) -> ReleaseSources:
    """What the registry recorded for `model` v`version`.

    NotFoundError for an unknown model or version; ConfigError when the version has no
    recorded training run (nothing to rebuild from) or its run has no weights; TrustError
    when the checkpoint in the store no longer matches the run's recorded hash."""
    from server.pipeline.steps import load_training_run

    artifacts = ArtifactStore(settings.artifacts_dir)
    registry = Registry(session_factory, artifacts)
    versions = {fmt: registry.get_version(model, version, fmt) for fmt in FORMATS}
    run_id = versions["int8"].lineage.training_run_id
    if run_id is None:
        raise ConfigError(
            f"{model} v{version} has no recorded checkpoint: it was packaged from a model "
            "trained or loaded outside the registry (a centralized package), so there is "
            "nothing to rebuild it from")
    run = load_training_run(settings, session_factory, run_id)
    if file_sha256(run.weights) != run.record.weights_sha256:
        raise TrustError(f"the checkpoint of training run {run_id} in the artifact store no "
                         f"longer matches its recorded sha256 {run.record.weights_sha256}")
    release = next((r for r in registry.list_releases(model) if r.version == version), None)
    signed: dict[ModelFormat, str] = {}
    if release is not None:
        target = next((t for t in TufRepository(settings.tuf_dir).targets()
                       if t.path == release.target_path), None)
        if target is not None:
            signed[release.format] = target.sha256  # type: ignore[index]
    registered = {fmt: record.artifact_sha256 for fmt, record in versions.items()}
    int8_path = _stored(artifacts, registered["int8"])
    if int8_path is not None and file_sha256(int8_path) != registered["int8"]:
        int8_path = None
    recipe = find_recipe(settings, session_factory, run_id, registered, int8_path, report_path)
    return ReleaseSources(model=model, version=version, task=run.task, versions=versions,
                          release=release, signed_sha256=signed, run=run, recipe=recipe)


# ---- the comparison --------------------------------------------------------------------


def _golden_batch(info: ReleaseInfo) -> NDArray[np.float32]:
    dims = [int(d) for d in info.input.shape[1:] if d is not None]
    inputs = np.asarray(info.golden.inputs, dtype=np.float32)
    return inputs.reshape(len(inputs), *dims)


def _outputs(path: Path, inputs: NDArray[np.float32], input_name: str) -> NDArray[np.float32]:
    from edgeops.packaging.evaluate import run_model

    outputs = run_model(path, inputs, input_name=input_name)
    return np.asarray(outputs, dtype=np.float32).reshape(len(inputs), -1)


def compare_artifact(
    fmt: ModelFormat,
    rebuilt: Path,
    stored: Path | None,
    registered_sha256: str,
    signed_sha256: str | None,
    info: ReleaseInfo,
) -> ArtifactComparison:
    """Compare a rebuilt model file with the registered one (`stored`: the store's file).

    Equal hashes everywhere: bit-identical. Otherwise both models run on the golden inputs
    of `info` (the registered release info of this format)."""
    rebuilt_sha = file_sha256(rebuilt)
    stored_sha = file_sha256(stored) if stored is not None else None
    reasons: list[str] = []
    if stored_sha is None:
        reasons.append("the artifact store has no file for the registered sha256")
    elif stored_sha != registered_sha256:
        reasons.append(f"the stored artifact's sha256 is {stored_sha}, not the registered "
                       f"{registered_sha256}: it was modified in the store")
    if signed_sha256 is not None and signed_sha256 != registered_sha256:
        reasons.append(f"the signed target's sha256 {signed_sha256} is not the registered one")
    common: dict[str, Any] = dict(
        format=fmt, registered_sha256=registered_sha256, signed_sha256=signed_sha256,
        stored_sha256=stored_sha, rebuilt_sha256=rebuilt_sha, atol=info.golden.atol,
        golden_count=len(info.golden.inputs))
    if not reasons and rebuilt_sha == registered_sha256:
        return ArtifactComparison(verdict="bit-identical", **common)

    inputs = _golden_batch(info)
    mine = _outputs(rebuilt, inputs, info.input.name)
    recorded = np.asarray(info.golden.outputs, dtype=np.float32)
    recorded_diff = (float(np.max(np.abs(mine - recorded))) if mine.shape == recorded.shape
                     else None)
    max_diff = agreement = None
    if stored is not None:
        try:
            theirs = _outputs(stored, inputs, info.input.name)
        except Exception as err:  # a broken file raises whatever onnxruntime raises
            reasons.append(f"the stored artifact cannot run on the golden inputs: {err}")
        else:
            if theirs.shape != mine.shape:
                reasons.append(f"outputs have shape {theirs.shape}, the rebuild {mine.shape}")
            else:
                max_diff = float(np.max(np.abs(mine - theirs)))
                agreement = float(np.mean(np.argmax(mine, 1) == np.argmax(theirs, 1)))
    if rebuilt_sha != registered_sha256:
        reasons.append(f"the rebuilt file's sha256 is {rebuilt_sha}, not {registered_sha256}")
    within = max_diff is not None and max_diff <= info.golden.atol and agreement == 1.0
    if max_diff is not None and not within:
        reasons.append(f"golden outputs differ by up to {max_diff:.3g} (atol "
                       f"{info.golden.atol:g}), same class on {agreement:.0%}")
    integrity_ok = stored_sha == registered_sha256 and signed_sha256 in (None, registered_sha256)
    verdict: Verdict = "equivalent within tolerance" if within and integrity_ok else "differs"
    return ArtifactComparison(verdict=verdict, max_abs_diff=max_diff, argmax_agreement=agreement,
                              recorded_golden_max_abs_diff=recorded_diff,
                              reasons=tuple(reasons), **common)


# ---- the rebuild -----------------------------------------------------------------------


def _rebuild(sources: ReleaseSources, out_dir: Path, progress: Progress | None) -> PackageReport:
    """Package the run's checkpoint as the server did: package_run when the recipe is one
    PackageOptions can express, else package_model with the recorded settings."""
    from edgeops.packaging import package_model
    from edgeops.tasks import load_task
    from server.pipeline.steps import PackageOptions, package_run

    config = sources.recipe.quantization
    if config == QuantizationConfig(method=config.method):
        options = PackageOptions(quantization=config.method,
                                 accuracy_budget_pp=_REBUILD_BUDGET_PP, overwrite=True)
        return package_run(sources.run, out_dir, options, progress=progress)
    run = sources.run
    return package_model(load_task(run.task), out_dir, checkpoint=run.weights,
                         quantization=config, accuracy_budget_pp=_REBUILD_BUDGET_PP,
                         overwrite=True, task_spec=run.task, progress=progress,
                         training_run_id=run.id, drift_reference=run.record.drift_reference)


def _notes(sources: ReleaseSources, rebuilt: PackageReport, current_code: str) -> list[str]:
    notes: list[str] = []
    recorded_code = sources.versions["int8"].lineage.code_version
    if recorded_code != current_code:
        notes.append(f"code version differs: packaged with {recorded_code}, rebuilt with "
                     f"{current_code}")
    recorded_data = sources.versions["int8"].lineage.data_fingerprint
    rebuilt_data = rebuilt.data["lineage"].get("data_fingerprint")
    if recorded_data is not None and recorded_data != rebuilt_data:
        notes.append(f"the task's data changed: fingerprint {rebuilt_data}, recorded "
                     f"{recorded_data} (calibration and golden inputs come from it)")
    recipe = sources.recipe
    if recipe.calibration_source != "task":
        notes.append(f"the release was calibrated on {recipe.calibration_source} inputs the "
                     "registry does not keep; rebuilt with the task's calibration data")
    samples = rebuilt.data["quantization"]["calibration"]["samples"]
    if recipe.calibration_samples is not None and samples != recipe.calibration_samples:
        notes.append(f"calibrated on {samples} samples, the release on "
                     f"{recipe.calibration_samples}")
    if sources.release is None:
        notes.append("this version has no signed release; compared with the registry only")
    return notes


def reproduce_release(
    settings: ServerSettings,
    session_factory: sessionmaker,
    model: str,
    version: int,
    *,
    out_dir: Path | None = None,
    report_path: Path | None = None,
    progress: Progress | None = None,
) -> ReproductionReport:
    """Rebuild `model` v`version` from its recorded checkpoint, task, code version and
    recipe and compare both formats with the registered, stored and signed files.

    The rebuilt package goes to `out_dir` (replaced if it exists) or a temporary folder
    that is removed afterwards. Errors: see `load_sources`."""
    from edgeops.packaging.lineage import code_version

    sources = load_sources(settings, session_factory, model, version, report_path)
    say = progress or (lambda _message: None)
    current_code = code_version()
    with tempfile.TemporaryDirectory(prefix="edgeops-reproduce-") as scratch:
        target = Path(out_dir) if out_dir is not None else Path(scratch) / "package"
        rebuilt = _rebuild(sources, target, progress)
        say("comparing with the registered and signed artifacts")
        artifacts = ArtifactStore(settings.artifacts_dir)
        comparisons = {
            fmt: compare_artifact(
                fmt,
                rebuilt.out_dir / rebuilt.data["files"][fmt],
                _stored(artifacts, record.artifact_sha256),
                record.artifact_sha256,
                sources.signed_sha256.get(fmt),
                _release_info(record),
            )
            for fmt, record in sources.versions.items()
        }
        notes = _notes(sources, rebuilt, current_code)
    report = ReproductionReport(
        model=model, version=version,
        release=sources.release.target_path if sources.release is not None else None,
        task=sources.task, training_run_id=sources.run.id,
        checkpoint_sha256=str(sources.run.record.weights_sha256),
        recorded_code_version=sources.versions["int8"].lineage.code_version,
        current_code_version=current_code, recipe=sources.recipe, artifacts=comparisons,
        notes=tuple(notes))
    logger.info("reproduced %s v%d: %s", model, version, report.verdict)
    return report


def _stored(artifacts: ArtifactStore, sha256: str) -> Path | None:
    try:
        return artifacts.path_for(sha256)
    except NotFoundError:
        return None


def _release_info(record: VersionRecord) -> ReleaseInfo:
    try:
        return ReleaseInfo.model_validate(record.release_info)
    except ValidationError as err:
        raise ConfigError(f"{record.model} v{record.version} {record.format}: the registered "
                          f"release info is invalid: {err}") from err
