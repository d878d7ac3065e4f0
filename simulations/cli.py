"""`edgeops simulate`: the whole loop on this machine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import emit
from edgeops.exit_codes import ExitCode

app = typer.Typer(add_completion=False)


@app.command(
    help=(
        "Run the whole EdgeOps loop on this machine: start Mosquitto on a free port, the "
        "server, and N agents with their own local data; train a model federatedly "
        "on the devices' own data (SecAgg+), quantize, sign and publish it; roll it out over the air in waves through the rollout controller; let them infer; collect telemetry.\n\n"
        "Writes report.json, report.html (plots) and the logs of every part into --out."
    )
)
def simulate(
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, help="How many agents to run.")] = 10,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report, logs and homes (must be empty or new).")] = Path("runs/latest"),
    task: Annotated[str, typer.Option(help="Built-in task name or module:attribute.")] = "digits",
    alpha: Annotated[float | None, typer.Option(help="Dirichlet alpha for non-IID local data (default: IID).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for training and data partitioning.")] = 0,
    training: Annotated[str, typer.Option(help="federated: the devices train the model with Flower rounds under SecAgg+ on their own data (default); centralized: the server trains it on the whole training split.")] = "federated",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 5,
    local_epochs: Annotated[int, typer.Option(min=1, help="Federated local epochs per round.")] = 3,
    epochs: Annotated[int, typer.Option(min=1, help="Centralized training epochs.")] = 30,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Longest wait for any fleet-wide step.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json instead of the table.")] = False,
) -> None:
    from simulations.laptop import SimulationConfig, run_simulation
    from simulations.report import summary_table, write_report

    config = SimulationConfig(
        out_dir=out, devices=devices, task=task, alpha=alpha, seed=seed, epochs=epochs, timeout_s=timeout_s,
        training=training, rounds=rounds, local_epochs=local_epochs,
    )
    result = run_simulation(config, progress=lambda message: typer.echo(message, err=True))
    paths = write_report(result, config.out_dir.resolve())
    emit(
        result.to_json(),
        as_json,
        summary_table(result) + f"\n\nreport: {paths['html']}\n        {paths['json']}",
    )
    if not result.succeeded:
        typer.echo("error: not every device reached the published version with telemetry", err=True)
        sys.exit(ExitCode.UPDATE)
