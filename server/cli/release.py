"""`edgeops release`: publish a model package as a signed TUF release, list releases."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import JsonOption, ServerHomeOption, emit
from edgeops.errors import ConfigError

__all__ = ["app"]

app = typer.Typer(
    name="release",
    help="Publish packaged models as signed releases (TUF targets) and list them.",
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
        }
        for r in releases
    ]
    lines = [
        f"{r['target_path']:<40} v{r['version']:<4} {r['format']:<5} "
        f"targets v{r['targets_version']}"
        for r in rows
    ]
    emit({"releases": rows}, as_json, "\n".join(lines) if lines else "no releases yet")
