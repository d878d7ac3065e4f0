"""`edgeops simulate`: a scenario's whole life of a model, on this machine."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import emit
from edgeops.exit_codes import ExitCode

app = typer.Typer(add_completion=False)

DEFAULT_SCENARIO = "drift-recovery"


@app.command(
    help=(
        "Run a scenario on this machine with real parts: Mosquitto on a free port, the server "
        "process (monitor and pipeline inside), agents in several processes, Flower with "
        "SecAgg+ for every training. The fleet lives through the scenario's timeline: a "
        "champion trained federatedly and rolled out in waves, then drift, faults and the "
        "server's own response (detect, retrain on the devices' fresh labels, gate, canary, "
        "promote or roll back).\n\n"
        "Built-in scenarios (simulations/scenarios/): baseline, drift-recovery (the default), "
        "bad-candidate, faults, scale. A scenario is a TOML file (docs/scenarios.md); give a "
        "path to run your own.\n\n"
        "Writes report.html (the timeline), report.json (its summary and assertions) and the "
        "logs of every part into --out. Exits 0 when every assertion holds, 1 when one fails "
        "(named on the screen), 3 for a bad scenario file.\n\n"
        "Examples:\n\n"
        "  edgeops simulate\n\n"
        "  edgeops simulate --scenario faults --out runs/faults\n\n"
        "  edgeops simulate --scenario my.toml --devices 12 --seed 3 --json"
    )
)
def simulate(
    scenario: Annotated[str, typer.Option("--scenario", "-s", help="A built-in scenario's name or a scenario file.")] = DEFAULT_SCENARIO,
    devices: Annotated[int | None, typer.Option("--devices", "-n", min=1, help="Fleet size (cohorts keep their shares).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data partitions, traffic and training.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report, logs and homes (must be empty or new).")] = Path("runs/latest"),
    console: Annotated[bool, typer.Option("--console", help="Keep the server up at the end and print the console's URL and a viewer token.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json's summary and assertions instead of the table.")] = False,
) -> None:
    from simulations.engine import run_scenario
    from simulations.scenario import load_scenario
    from simulations.timeline_report import summary_lines

    chosen = load_scenario(scenario)  # a bad file stops here, before anything starts
    if devices is not None or seed is not None:
        chosen = chosen.override(devices=devices, seed=seed)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run = run_scenario(chosen, out, progress=lambda message: typer.echo(message, err=True),
                       keep_console=console)
    timeline = run.timeline
    lines = summary_lines(timeline)  # type: ignore[arg-type]
    emit(
        {"summary": timeline["summary"], "assertions": timeline["assertions"],
         "report": str(run.out_dir / "report.html")},
        as_json,
        "\n".join(lines) + f"\n\nreport: {run.out_dir / 'report.html'}"
        f"\nlogs:   {run.out_dir / 'logs'}",
    )
    failed = [a for a in timeline["assertions"] if not a["passed"]]
    for assertion in failed:
        typer.echo(f"assertion failed: {assertion['name']}: {assertion['detail']}", err=True)
    if failed:
        sys.exit(ExitCode.FAILURE)
