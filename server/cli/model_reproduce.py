"""`edgeops model reproduce`: rebuild a release from what the registry recorded and say
whether it matches (the work is server.governance.reproduce's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer

from edgeops.cli import JsonOption, ServerHomeOption, emit
from edgeops.exit_codes import ExitCode

if TYPE_CHECKING:
    from server.governance.reproduce import ReproductionReport

__all__ = ["EXIT_CODES", "format_report", "reproduce"]

EXIT_CODES: dict[str, ExitCode] = {
    "bit-identical": ExitCode.OK,
    "equivalent within tolerance": ExitCode.OK,
    "differs": ExitCode.TRUST,
}


def reproduce(
    model: Annotated[str, typer.Argument(help="The model's name, e.g. digits.")],
    version: Annotated[int, typer.Argument(min=1, help="The model version to rebuild.")],
    home: ServerHomeOption,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="The package's report.json, to read the quantization "
                     "recipe from (default: the pipeline run's, else read off the int8 "
                     "model). Refused unless its hashes are this release's."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Keep the rebuilt package in this folder (replaced if it "
                     "exists); default: a temporary folder, removed afterwards."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild MODEL v VERSION's fp32 and int8 files from the recorded checkpoint (its
    training run's weights), task, code version and quantization recipe, with the packaging
    function the server uses, and compare their sha256 with the registered, stored and
    signed (TUF) ones. If the bytes differ, both models run on the release's golden inputs.

    Verdict and exit code: bit-identical (0); equivalent within tolerance (0: max abs
    difference within the golden atol, same class everywhere); differs (5). A version with
    no recorded checkpoint (a centralized package) exits 3; an unknown model or version 8.

    Example:  edgeops model reproduce digits 3 --home srv
    """
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.governance.reproduce import reproduce_release

    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    click.echo(f"Rebuilding {model} v{version}", err=True)
    try:
        result = reproduce_release(settings, session_factory, model, version, out_dir=out,
                                   report_path=report,
                                   progress=lambda step: click.echo(f"  {step}", err=True))
    finally:
        close_database(session_factory)
    emit(result.to_json(), as_json, format_report(result))
    raise typer.Exit(EXIT_CODES[result.verdict])


def format_report(report: ReproductionReport) -> str:
    """The human-readable answer: the verdict, what was used, one line per format."""
    code = ("same code version" if report.code_version_matches
            else f"code {report.recorded_code_version} -> {report.current_code_version}")
    recipe = report.recipe
    lines = [
        f"{report.model} v{report.version} ({report.release or 'not released'}): "
        f"{report.verdict}",
        f"  from training run {report.training_run_id} (checkpoint "
        f"{report.checkpoint_sha256[:12]}), task {report.task}, {code}",
        f"  recipe: {recipe.quantization.method} int8, calibration {recipe.calibration_source}"
        f" ({recipe.source})",
    ]
    for fmt, item in report.artifacts.items():
        line = f"  {fmt}: {item.verdict}, sha256 {item.rebuilt_sha256[:12]}"
        if item.max_abs_diff is not None:
            line += (f", max abs diff {item.max_abs_diff:.3g} (atol {item.atol:g}), "
                     f"same class {item.argmax_agreement:.0%} of {item.golden_count}")
        lines.append(line)
        lines.extend(f"    {reason}" for reason in item.reasons)
    lines.extend(f"  note: {note}" for note in report.notes)
    return "\n".join(lines)
