"""`edgeops model`: turn a task's model into a gated fp32 + int8 ONNX package."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer

from edgeops.cli import JsonOption, emit
from edgeops.errors import ConfigError
from server.cli.model_card import card
from server.cli.model_reproduce import reproduce

if TYPE_CHECKING:
    from server.pipeline.steps import TrainedRun

__all__ = ["app", "format_summary"]

app = typer.Typer(
    name="model",
    help="Package models: train or load, export to ONNX, quantize to int8, evaluate, gate.",
    no_args_is_help=True,
)
app.command("card")(card)
app.command("reproduce")(reproduce)

QUANTIZATION_METHODS = ("static", "dynamic")
# Keys of report.json that --json repeats; the full report (golden vectors, drift
# reference) stays in the package's report.json.
SUMMARY_KEYS = (
    "model",
    "task",
    "files",
    "sha256",
    "sizes_bytes",
    "size_ratio",
    "accuracy",
    "agreement",
    "p50_latency_us",
    "quantization",
    "lineage",
)


@app.callback()
def model_group() -> None:
    """Package models: train or load, export to ONNX, quantize to int8, evaluate, gate."""
    # A callback keeps `model` a group even while it has a single command.


class _StepPrinter:
    """Progress lines on stderr: each step as it starts, with the time the last one took."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._step_started: float | None = None

    def __call__(self, message: str) -> None:
        self._finish_step()
        click.echo(f"  {message}...", err=True, nl=False)
        self._step_started = time.monotonic()

    def _finish_step(self) -> None:
        if self._step_started is not None:
            click.echo(f" {time.monotonic() - self._step_started:.1f}s", err=True)
            self._step_started = None

    def close(self, status: str) -> None:
        self._finish_step()
        click.echo(f"{status} in {time.monotonic() - self._started:.1f}s", err=True)


@app.command("package")
def package(
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="A built-in task (digits) or a user task as package.module:attribute "
            "(with --from-run: the run's task).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Package folder to create (default ./package-<task>). Must be new or empty.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Package this torch state_dict (torch.save(model.state_dict())) instead of "
            "training the task's model.",
        ),
    ] = None,
    quantization: Annotated[
        str,
        typer.Option(
            "--quantization",
            help="static: int8 weights and activations, calibrated on task data (smallest, "
            "fastest). dynamic: int8 weights, activations quantized at run time.",
        ),
    ] = "static",
    accuracy_budget_pp: Annotated[
        float,
        typer.Option(
            "--accuracy-budget-pp",
            min=0.0,
            help="Refuse the package (exit 4) if int8 top-1 accuracy falls more than this "
            "many percentage points below fp32.",
        ),
    ] = 1.0,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A .npy array of representative inputs, shape (n, features), to calibrate "
            "static quantization instead of the task's own calibration data.",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, help="Training epochs (default 30)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for weight init and batch order (default 0).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it exists and is not empty.")
    ] = False,
    from_run: Annotated[
        int | None,
        typer.Option(
            "--from-run",
            help="Package the final weights of this training run ('edgeops train --home'); "
            "its id goes into report.json's lineage and the fleet's securely aggregated "
            "feature histogram becomes the release's drift reference. Needs --home.",
        ),
    ] = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="The server home holding --from-run.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train (or load --checkpoint) the task's model, export it to ONNX fp32, quantize it to
    int8, measure both on the task's held-out split and write model.fp32.onnx,
    model.int8.onnx and report.json to --out, ready for 'edgeops release publish'.

    Nothing is written unless int8 accuracy stays within --accuracy-budget-pp of fp32.

    Example:  edgeops model package --task digits --out package-digits
              edgeops model package --from-run 1 --home srv --out package-digits
    """
    from edgeops.packaging import package_model
    from edgeops.tasks import TrainConfig, load_task
    from server.pipeline.steps import PackageOptions, package_run

    if quantization not in QUANTIZATION_METHODS:
        raise ConfigError(
            f"--quantization must be one of {', '.join(QUANTIZATION_METHODS)}, got {quantization!r}"
        )
    if checkpoint is not None and (epochs is not None or seed is not None):
        raise ConfigError(
            "--epochs and --seed train a model; they cannot be used with --checkpoint"
        )
    run = None
    if from_run is not None:
        if home is None:
            raise ConfigError("--from-run needs --home, the server home that recorded the run")
        if checkpoint is not None or epochs is not None or seed is not None:
            raise ConfigError("--from-run packages a run's weights: drop --checkpoint/--epochs/--seed")
        run = _training_run(home, from_run)
        if task is not None and task != run.task:
            raise ConfigError(f"training run {from_run} trained {run.task!r}, not {task!r}")
        task = run.task
    if task is None:
        raise ConfigError("give --task (or --from-run with --home)")
    loaded_task = load_task(task)
    out_dir = out if out is not None else Path(f"package-{loaded_task.name}")
    train_config = None
    if checkpoint is None and run is None:
        overrides = {"epochs": epochs, "seed": seed}
        train_config = replace(
            TrainConfig(), **{name: value for name, value in overrides.items() if value is not None}
        )
    calibration_override = _load_calibration(calibration) if calibration is not None else None
    options = PackageOptions(
        quantization=quantization,  # type: ignore[arg-type]
        accuracy_budget_pp=accuracy_budget_pp,
        overwrite=overwrite,
    )

    printer = _StepPrinter()
    click.echo(f"Packaging {task} into {out_dir}", err=True)
    try:
        if run is not None:
            result = package_run(
                run, out_dir, options, calibration_override=calibration_override, progress=printer
            )
        else:
            result = package_model(
                loaded_task,
                out_dir,
                checkpoint=checkpoint,
                train_config=train_config,
                quantization=options.quantization,
                accuracy_budget_pp=options.accuracy_budget_pp,
                calibration_override=calibration_override,
                overwrite=options.overwrite,
                task_spec=task,
                progress=printer,
            )
    except BaseException:
        printer.close("failed")
        raise
    printer.close("done")
    summary = {key: result.data[key] for key in SUMMARY_KEYS}
    summary["out_dir"] = str(result.out_dir)
    emit(summary, as_json, format_summary(result.data, result.out_dir))


def _training_run(home: Path, run_id: int) -> TrainedRun:
    """The run's record and the local path of its weights in the artifact store."""
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.pipeline.steps import load_training_run

    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    try:
        return load_training_run(settings, session_factory, run_id)
    finally:
        close_database(session_factory)


def _load_calibration(path: Path) -> Any:
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"calibration file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"calibration file {str(path)!r} is not a .npy array: {err}") from err


def format_summary(report: Mapping[str, Any], out_dir: Path) -> str:
    """The human-readable result: a small fp32 / int8 table."""
    sizes, accuracy, latency = report["sizes_bytes"], report["accuracy"], report["p50_latency_us"]
    budget = report["quantization"]["accuracy_budget_pp"]
    change_pp = (accuracy["int8"] - accuracy["fp32"]) * 100 + 0.0  # + 0.0: no "-0.00"
    rows = [
        ("", "fp32", "int8", ""),
        ("size", _kib(sizes["fp32"]), _kib(sizes["int8"]), f"x{report['size_ratio']:.3f}"),
        (
            "accuracy",
            f"{accuracy['fp32']:.2%}",
            f"{accuracy['int8']:.2%}",
            f"{change_pp:+.2f} pp (budget {budget:g} pp)",
        ),
        (
            "p50 latency",
            f"{latency['fp32']:.1f} us",
            f"{latency['int8']:.1f} us",
            "1 sample, 1 thread",
        ),
        ("agreement", "", f"{report['agreement']:.2%}", "same top-1 as fp32"),
    ]
    table = "\n".join(f"  {a:<12}{b:>12}{c:>12}  {d}".rstrip() for a, b, c, d in rows)
    return (
        f"Packaged {report['model']} ({report['quantization']['method']} int8) into {out_dir}\n"
        f"{table}\n"
        f"Next: edgeops release publish --home <server home> --package {out_dir}"
    )


def _kib(size_bytes: int) -> str:
    return f"{size_bytes / 1024:.1f} KiB"
