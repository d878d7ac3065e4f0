"""Publish a model package as a signed release.

A package is the folder `edgeops model package --out DIR` writes:

    model.fp32.onnx, model.int8.onnx
    report.json   {"model", "task", "release_info": {"fp32": {...}, "int8": {...}},
                   "metrics", "lineage": {"data_fingerprint", "code_version",
                                          "training_run_id"?, "parent_version"?}}

`release_info.<fmt>` is a ReleaseInfo without `version`: the version is assigned here.
An optional `"sha256": {"fp32": hex, "int8": hex}` is checked against the model files.
`metrics` is stored on both formats' rows, or per format if it has "fp32"/"int8" objects.
The released format's ReleaseInfo gets the signed part of the release's model card
(server.governance.model_card), built from the report, the training run and the pipeline
run, and validated against its schema before anything is recorded or signed.

Order of effects, so agents never see half a release: validate everything (including
each model against its own golden vectors), store the artifacts (content-addressed,
invisible to agents), record both versions and the release in one database transaction,
and only then sign the TUF target, with the deltas from the releases devices run and
the compressed artifact (`server.pipeline.deltas`) in the same targets version;
timestamp.json, written last, is what makes them visible. If signing fails the database
rows are removed again; if the process dies before signing, the next publish removes them
(`drop_unsigned_releases`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError
from edgeops.packaging.source import file_sha256
from edgeops.schemas import ModelFormat, ReleaseInfo, target_path
from server.config.settings import ServerSettings
from server.governance import audit_chain
from server.governance.model_card import CardSource, signed_card
from server.pipeline.deltas import auxiliary_targets
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import FORMATS, Lineage, NewVersion, Registry
from server.trust.repository import TufRepository

__all__ = [
    "ModelPackage",
    "PublishedRelease",
    "check_golden",
    "drop_unsigned_releases",
    "load_package",
    "publish_package",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
MODEL_FILES: dict[ModelFormat, str] = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx"}


@dataclass(frozen=True)
class ModelPackage:
    """A validated package folder. `release_infos` carry version 1 as a placeholder."""

    directory: Path
    model: str
    task: str
    model_files: dict[ModelFormat, Path]
    release_infos: dict[ModelFormat, ReleaseInfo]
    metrics: dict[str, Any]
    data_fingerprint: str | None
    code_version: str | None
    training_run_id: int | None
    parent_version: int | None
    report: dict[str, Any] = field(default_factory=dict)  # report.json as read

    def metrics_for(self, fmt: ModelFormat) -> dict[str, Any]:
        per_format = self.metrics.get(fmt)
        return dict(per_format) if isinstance(per_format, dict) else dict(self.metrics)


@dataclass(frozen=True)
class PublishedRelease:
    model: str
    version: int
    format: ModelFormat
    target_path: str
    targets_version: int
    artifact_sha256: str
    size_bytes: int
    release_info: ReleaseInfo
    version_ids: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "format": self.format,
            "target_path": self.target_path,
            "targets_version": self.targets_version,
            "artifact_sha256": self.artifact_sha256,
            "size_bytes": self.size_bytes,
            "version_ids": self.version_ids,
        }


def _field(
    report: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    where: str,
    required: bool = True,
) -> Any:
    if name not in report or report[name] is None:
        if required:
            raise ConfigError(f"{where}: missing field '{name}'")
        return None
    value = report[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ConfigError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def _release_info(raw: Any, model: str, fmt: ModelFormat, where: str) -> ReleaseInfo:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: field 'release_info.{fmt}' must be an object")
    values = dict(raw)
    if "version" in values:
        logger.warning(
            "%s: ignoring release_info.%s.version; publish assigns the version", where, fmt
        )
        values.pop("version")
    for name, expected in (("model", model), ("format", fmt)):
        if values.setdefault(name, expected) != expected:
            raise ConfigError(
                f"{where}: field 'release_info.{fmt}.{name}' is {values[name]!r}, "
                f"expected {expected!r}"
            )
    try:
        return ReleaseInfo.model_validate({**values, "version": 1})
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"{where}: field 'release_info.{fmt}.{loc}' is invalid: {first['msg']}"
            + (f" ({len(err.errors()) - 1} more errors)" if len(err.errors()) > 1 else "")
        ) from err


def load_package(package_dir: Path) -> ModelPackage:
    """Read and validate a package folder; ConfigError naming the file or field at fault."""
    directory = Path(package_dir)
    if not directory.is_dir():
        raise ConfigError(f"package folder {directory} does not exist")
    missing = [
        name for name in (*MODEL_FILES.values(), REPORT_FILE) if not (directory / name).is_file()
    ]
    if missing:
        raise ConfigError(f"package {directory} is missing {', '.join(missing)}")
    report_path = directory / REPORT_FILE
    try:
        report = json.loads(report_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{report_path} is not valid JSON: {err}") from err
    where = str(report_path)
    if not isinstance(report, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    model = _field(report, "model", str, where)
    task = _field(report, "task", str, where)
    release_info = _field(report, "release_info", dict, where)
    metrics = _field(report, "metrics", dict, where, required=False) or {}
    lineage = _field(report, "lineage", dict, where)
    infos = {fmt: _release_info(release_info.get(fmt), model, fmt, where) for fmt in FORMATS}
    model_files = {fmt: directory / name for fmt, name in MODEL_FILES.items()}
    _check_hashes(_field(report, "sha256", dict, where, required=False) or {}, model_files, where)
    lineage_where = f"{where} lineage"
    return ModelPackage(
        directory=directory,
        model=model,
        task=task,
        model_files=model_files,
        release_infos=infos,
        metrics=metrics,
        data_fingerprint=_field(lineage, "data_fingerprint", str, lineage_where),
        code_version=_field(lineage, "code_version", str, lineage_where),
        training_run_id=_field(lineage, "training_run_id", int, lineage_where, required=False),
        parent_version=_field(lineage, "parent_version", int, lineage_where, required=False),
        report=report,
    )


def _check_hashes(
    expected: dict[str, Any], model_files: dict[ModelFormat, Path], where: str
) -> None:
    for fmt, path in model_files.items():
        if fmt not in expected:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        if digest.hexdigest() != expected[fmt]:
            raise ConfigError(
                f"{where}: field 'sha256.{fmt}' does not match {path.name} "
                "(the package was modified after it was written)"
            )


def check_golden(model_file: Path, info: ReleaseInfo) -> None:
    """Refuse (ConfigError) a model that does not reproduce its own golden vectors."""
    import numpy as np
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        inputs = np.asarray(info.golden.inputs, dtype=np.float32)
        inputs = inputs.reshape(len(info.golden.inputs), info.input.num_features)
        dims = [d for d in info.input.shape[1:] if d is not None]  # num_features checked these
        batch = inputs.reshape(len(info.golden.inputs), *dims)
        (outputs,) = session.run([info.output_name], {info.input.name: batch})
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ConfigError(f"{model_file.name} cannot run on its golden inputs: {err}") from err
    expected = np.asarray(info.golden.outputs, dtype=np.float32)
    actual = np.asarray(outputs, dtype=np.float32).reshape(expected.shape[0], -1)
    if actual.shape != expected.shape:
        raise ConfigError(
            f"{model_file.name}: golden outputs have shape {expected.shape}, "
            f"the model gives {actual.shape}"
        )
    worst = float(np.max(np.abs(actual - expected)))
    if worst > info.golden.atol:
        raise ConfigError(
            f"{model_file.name} does not reproduce its golden outputs: "
            f"max abs difference {worst:.3g} > atol {info.golden.atol:g}"
        )


def publish_package(
    settings: ServerSettings,
    session_factory: sessionmaker,
    package_dir: Path,
    fmt: ModelFormat = "int8",
    actor: str = "local operator (CLI)",
) -> PublishedRelease:
    """Register both formats of the package as the model's next version and release `fmt`;
    the publication is an audit entry by `actor` (target "release <target path>")."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    package = load_package(package_dir)
    for each in FORMATS:
        check_golden(package.model_files[each], package.release_infos[each])
    registry = Registry(session_factory, ArtifactStore(settings.artifacts_dir))
    repository = TufRepository(settings.tuf_dir)

    with repository.locked():
        drop_unsigned_releases(registry, repository)
        version = registry.next_version(package.model)
        infos = {
            f: _with_required_opset(
                package.release_infos[f].model_copy(update={"version": version}),
                package.model_files[f],
            )
            for f in FORMATS
        }
        path = target_path(package.model, version, fmt)
        infos[fmt] = _with_model_card(session_factory, package, infos[fmt], path)
        items = [
            NewVersion(
                format=f,
                artifact_path=package.model_files[f],
                metrics=package.metrics_for(f),
                release_info=infos[f].model_dump(mode="json", by_alias=True),
                lineage=Lineage(
                    parent_version_id=_parent_id(registry, package, f),
                    training_run_id=package.training_run_id,
                    data_fingerprint=package.data_fingerprint,
                    code_version=package.code_version,
                ),
            )
            for f in FORMATS
        ]
        expected_targets_version = repository.targets_version() + 1
        records = registry.register_versions(
            package.model,
            package.task,
            version,
            items,
            release=(fmt, path, expected_targets_version),
        )
        try:
            extra = _auxiliary_targets(settings, session_factory, repository, path,
                                       package.model_files[fmt])  # fmt: skip
            targets_version = repository.add_target(
                path, package.model_files[fmt], infos[fmt].to_custom(), also=extra
            )
        except BaseException:
            logger.error(
                "signing %s failed; removing %s v%d from the registry", path, package.model, version
            )
            registry.delete_version(package.model, version)
            raise
    if targets_version != expected_targets_version:  # the lock makes this impossible
        raise RuntimeError(
            f"targets version {targets_version}, expected {expected_targets_version}"
        )
    released = next(r for r in records if r.format == fmt)
    logger.info("published %s (targets v%d)", path, targets_version)
    with session_factory.begin() as session:
        audit_chain.append(
            session, actor=actor, role=None, action="release.publish", resource="release",
            target=f"release {path}",
            reason=f"{package.model} v{version} signed in targets v{targets_version}"
            + (f" from training run {package.training_run_id}" if package.training_run_id else ""),
        )
    return PublishedRelease(
        model=package.model,
        version=version,
        format=fmt,
        target_path=path,
        targets_version=targets_version,
        artifact_sha256=released.artifact_sha256,
        size_bytes=released.size_bytes,
        release_info=infos[fmt],
        version_ids={r.format: r.id for r in records},
    )


def _auxiliary_targets(
    settings: ServerSettings,
    session_factory: sessionmaker,
    repository: TufRepository,
    release_target: str,
    artifact: Path,
) -> list[tuple[str, Path, dict[str, Any]]]:
    """The deltas and compressed copy to sign with the release, stored in the artifact
    store; none if computing them fails (the release does not depend on them)."""
    store = ArtifactStore(settings.artifacts_dir)
    try:
        made = auxiliary_targets(
            session_factory, store, repository.targets(), release_target, artifact
        )
        return [
            (target.path, store.path_for(store.put_bytes(target.data)[0]), target.custom)
            for target in made
        ]
    except Exception:
        logger.exception("no deltas for %s: computing them failed", release_target)
        return []


def _with_model_card(
    session_factory: sessionmaker, package: ModelPackage, info: ReleaseInfo, path: str
) -> ReleaseInfo:
    """`info` with the signed part of the release's model card (ConfigError if invalid)."""
    model_file = package.model_files[info.format]
    source = CardSource(
        model=package.model,
        task=package.task,
        version=info.version,
        format=info.format,
        target_path=path,
        artifact_sha256=file_sha256(model_file),
        size_bytes=model_file.stat().st_size,
        release_info=info,
        released_at=datetime.now(UTC),
        report=package.report,
        metrics=package.metrics_for(info.format),
        data_fingerprint=package.data_fingerprint,
        code_version=package.code_version,
        training_run_id=package.training_run_id,
        parent_version=package.parent_version,
    )
    with session_factory() as session:
        card = signed_card(session, source)
    return ReleaseInfo.model_validate({**info.model_dump(by_alias=True), "model_card": card})


def drop_unsigned_releases(registry: Registry, repository: TufRepository) -> list[str]:
    """Remove the versions of releases whose target is not in the signed targets metadata;
    return their target paths.

    Only a publish killed between its database commit and its signature leaves one (a
    failure in between is undone at once), and no agent can ever have seen it. Call with
    the repository lock held, so that no publish is in flight."""
    signed = {target.path for target in repository.targets()}
    dropped = []
    for release in registry.list_releases():
        if release.target_path not in signed and release.withdrawn_at is None:
            logger.warning(
                "%s v%d was recorded but never signed (an interrupted publish); removing it",
                release.model, release.version,
            )
            registry.delete_version(release.model, release.version)
            dropped.append(release.target_path)
    return dropped


def model_opset(model_file: Path) -> int | None:
    """The ai.onnx opset `model_file` imports (None if it declares none)."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise ConfigError(f"{model_file.name} is not an ONNX model: {err}") from err
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


def _with_required_opset(info: ReleaseInfo, model_file: Path) -> ReleaseInfo:
    """Declare the model's opset in the release, so agents whose onnxruntime is older
    refuse it before downloading (a package may state it itself; it is kept then)."""
    if info.required_opset is not None:
        return info
    return info.model_copy(update={"required_opset": model_opset(model_file)})


def _parent_id(registry: Registry, package: ModelPackage, fmt: ModelFormat) -> int | None:
    if package.parent_version is None:
        return None
    try:
        return registry.get_version(package.model, package.parent_version, fmt).id
    except NotFoundError as err:
        raise ConfigError(
            f"lineage.parent_version {package.parent_version} of model {package.model!r} "
            f"({fmt}) is not in the registry"
        ) from err
