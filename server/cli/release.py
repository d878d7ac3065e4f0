"""`edgeops release`: publish a model package as a signed TUF release, list and withdraw
releases, write a static mirror of the repository."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeops.cli import JsonOption, ServerHomeOption, emit
from edgeops.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

    from server.config.settings import ServerSettings

__all__ = ["app"]

app = typer.Typer(
    name="release",
    help="Publish packaged models as signed releases (TUF targets), list and withdraw them, "
    "mirror them to static hosting.",
    no_args_is_help=True,
)

HomeOption = ServerHomeOption


@app.command("publish")
def publish(
    home: HomeOption,
    package: Annotated[
        Path, typer.Option("--package", help="Folder written by 'edgeops model package --out'.")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="Which format agents get: int8 or fp32.")
    ] = "int8",
    as_json: JsonOption = False,
) -> None:
    """Register both formats of PACKAGE as the model's next version and sign FORMAT as a
    TUF target that agents can install."""
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.pipeline.steps import publish_release

    if fmt not in ("int8", "fp32"):
        raise ConfigError(f"--format must be int8 or fp32, got {fmt!r}")
    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    try:
        released = publish_release(settings, session_factory, package, fmt,  # type: ignore[arg-type]
                                   actor=f"{getpass.getuser()} (CLI on the server)")
    finally:
        close_database(session_factory)
    emit(
        released.to_json(),
        as_json,
        f"Published {released.model} v{released.version} ({released.format}) as "
        f"{released.target_path} (targets v{released.targets_version}, "
        f"sha256 {released.artifact_sha256[:12]}…, {released.size_bytes} bytes)",
    )


@app.command("list")
def list_releases(home: HomeOption, as_json: JsonOption = False) -> None:
    """List every published release, oldest first."""
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.registry.artifact_store import ArtifactStore
    from server.registry.registry import Registry

    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    try:
        releases = Registry(session_factory, ArtifactStore(settings.artifacts_dir)).list_releases()
    finally:
        close_database(session_factory)
    rows = [
        {
            "model": r.model,
            "version": r.version,
            "format": r.format,
            "target_path": r.target_path,
            "targets_version": r.targets_version,
            "artifact_sha256": r.artifact_sha256,
            "size_bytes": r.size_bytes,
            "created_at": r.created_at.isoformat(),
            "withdrawn_at": r.withdrawn_at.isoformat() if r.withdrawn_at else None,
        }
        for r in releases
    ]
    lines = [
        f"{r['target_path']:<40} v{r['version']:<4} {r['format']:<5} "
        f"targets v{r['targets_version']}" + ("  WITHDRAWN" if r["withdrawn_at"] else "")
        for r in rows
    ]
    emit({"releases": rows}, as_json, "\n".join(lines) if lines else "no releases yet")


@app.command("mirror")
def mirror(
    home: HomeOption,
    to: Annotated[
        Path,
        typer.Option(
            "--to",
            help="The mirror folder: serve it with any static web server, object store or "
            "CDN, and list its URL in the agents' `mirrors` setting.",
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Write the signed TUF repository and its release artifacts to the folder TO in the
    static layout agents fetch (TO/metadata/..., TO/targets/<dir>/<sha256>.<name>).

    Mirrors need no trust: agents verify every file against the keys they hold, so a
    stale, tampered or incomplete mirror is refused and the next one is tried. Rerun it
    after every publish or withdrawal (or on a schedule: timestamp.json expires); it copies
    only what changed, and writes timestamp.json last, so a mirror being synced keeps
    serving the previous release state until the new one is complete."""
    from server.config.settings import load_settings
    from server.registry.artifact_store import ArtifactStore
    from server.trust.mirror import write_mirror

    settings = load_settings(home)
    report = write_mirror(settings.tuf_dir, ArtifactStore(settings.artifacts_dir), to)
    copied = len(report.copied_targets)
    emit(
        report.to_json(),
        as_json,
        f"Mirror {report.directory} is at targets v{report.targets_version} "
        f"(timestamp v{report.timestamp_version}): copied {copied} artifact"
        f"{'' if copied == 1 else 's'} ({report.copied_bytes} bytes), "
        f"{len(report.present_targets)} already there, "
        f"{len(report.copied_metadata)} metadata file"
        f"{'' if len(report.copied_metadata) == 1 else 's'} written",
    )


@app.command("withdraw")
def withdraw(
    release: Annotated[
        str,
        typer.Argument(
            help="The release: its target path (digits/3/model.int8.onnx) or "
            "its version number (with --model when several models have releases)."
        ),
    ],
    home: HomeOption,
    reason: Annotated[
        str,
        typer.Option("--reason", help="Why it is withdrawn (kept in the registry and audit log)."),
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="The model whose VERSION this is.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Withdraw even the champion or the target of an active "
            "rollout (devices not yet updated then fail verification).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Withdraw RELEASE (a target path such as digits/3/model.int8.onnx, or a version
    number): remove its target from the signed TUF targets (new targets,
    snapshot and timestamp) and mark it in the registry, so no agent can verify it and no
    rollout or deployment sends it again. Devices that run it keep running it: roll them
    forward with a newer release. Refuses the champion and the target of an active rollout
    unless --force. Running it again finishes an interrupted withdrawal."""
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.pipeline.withdrawal import withdraw_release

    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    try:
        target = _release_target(settings, session_factory, release, model)
        withdrawn = withdraw_release(
            settings,
            session_factory,
            target,
            reason=reason,
            force=force,
            actor=f"{getpass.getuser()} (CLI on the server)",
        )
    finally:
        close_database(session_factory)
    r = withdrawn.release
    text = (
        f"{r.target_path} was already withdrawn"
        if withdrawn.already
        else f"Withdrew {r.model} v{r.version} ({r.format}): {r.target_path} is no longer in "
        f"the signed targets (targets v{withdrawn.targets_version})"
    )
    emit(withdrawn.to_json(), as_json, text)


def _release_target(
    settings: ServerSettings, session_factory: sessionmaker, release: str, model: str | None
) -> str:
    """The target path RELEASE names: itself, or the release of version RELEASE."""
    from server.registry.artifact_store import ArtifactStore
    from server.registry.registry import Registry

    registry = Registry(session_factory, ArtifactStore(settings.artifacts_dir))
    if not release.isdigit():
        return registry.find_release(release).target_path
    if model is None:
        models = sorted({r.model for r in registry.list_releases()})
        if len(models) != 1:
            raise ConfigError(
                f"--model is needed to tell whose version {release} this is "
                f"(models with releases: {', '.join(models) or 'none'})"
            )
        model = models[0]
    return registry.get_release(model, int(release)).target_path
