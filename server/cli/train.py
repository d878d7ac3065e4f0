"""`edgeops train`: federated training in Flower's Simulation Engine, recorded in the registry."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgeops.cli import JsonOption, emit
from edgeops.errors import ConfigError

__all__ = ["app", "format_summary"]

app = typer.Typer(add_completion=False)

_HELP = (
    "Train a task's model federatedly: N simulated devices (Flower Simulation Engine, Ray) "
    "each train on their own partition of the task's data (the same partitioner as "
    "'edgeops simulate'); the server averages their updates under SecAgg+ secure "
    "aggregation, so it only ever sees the sum.\n\n"
    "Every round's outcome is checked: if no round produced a new model (SecAgg+ halted, "
    "every client failed, DP dropped rounds with failures) the command exits with code 10 "
    "and registers nothing. With --home the run, its per-round metrics, final weights and "
    "the fleet's drift histogram are recorded; then package it with\n\n"
    "  edgeops model package --from-run RUN --home HOME\n\n"
    "Example:  edgeops train --task digits --clients 10 --rounds 5 --home srv --json"
)


@app.command(help=_HELP)
def train(
    task: Annotated[str, typer.Option(help="Built-in task (digits) or package.module:attribute.")] = "digits",
    clients: Annotated[int, typer.Option("--clients", "-n", min=1, help="Simulated devices.")] = 10,
    rounds: Annotated[int, typer.Option("--rounds", "-r", min=1, help="Federated rounds.")] = 5,
    secagg: Annotated[bool, typer.Option("--secagg/--no-secagg", help="SecAgg+ secure aggregation (needs >= 3 clients).")] = True,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox or fedadam.")] = "fedavg",
    alpha: Annotated[float | None, typer.Option(help="Dirichlet alpha for non-IID local data (default: IID).")] = None,
    home: Annotated[Path | None, typer.Option("--home", help="Server home: record the run in its registry.")] = None,
    epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    learning_rate: Annotated[float, typer.Option("--lr", help="Client learning rate (Adam).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for initial weights, local training and partitions.")] = 0,
    fraction_fit: Annotated[float, typer.Option(help="Fraction of clients sampled per round.")] = 1.0,
    proximal_mu: Annotated[float, typer.Option(help="FedProx mu.")] = 0.01,
    server_lr: Annotated[float, typer.Option(help="FedAdam server learning rate (eta).")] = 1e-2,
    num_shares: Annotated[float, typer.Option(help="SecAgg+ shares per client: an int > 2, or a fraction < 1 of the sampled clients.")] = 5,
    reconstruction_threshold: Annotated[float, typer.Option(help="SecAgg+ shares needed to unmask: an int < num-shares, or a fraction <= 1 of them.")] = 3,
    clipping_range: Annotated[float, typer.Option(help="SecAgg+ clipping range of weights before quantization.")] = 8.0,
    secagg_timeout_s: Annotated[float, typer.Option(help="Longest wait for the replies of one SecAgg+ stage.")] = 120.0,
    dp_noise_multiplier: Annotated[float | None, typer.Option(help="Central DP (client-side fixed clipping): Gaussian noise multiplier.")] = None,
    dp_clipping_norm: Annotated[float | None, typer.Option(help="Central DP: clipping norm of each client's update.")] = None,
    drop_clients: Annotated[str, typer.Option(help="Fault injection: comma-separated client ids that fail every fit.")] = "",
    cpus: Annotated[int | None, typer.Option(help="CPUs the Simulation Engine may use (default: all).")] = None,
    client_cpus: Annotated[float, typer.Option(help="CPUs each virtual client reserves.")] = 1.0,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Where Flower's and Ray's logs go (default: HOME/logs/flower.log, or runs/train-TIME/flower.log without --home).")] = None,
    as_json: JsonOption = False,
) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from server.federated.config import DPConfig, FederatedConfig, SecAggConfig, StrategyConfig
    from server.federated.driver import EngineResources, run_simulation_engine

    if (dp_noise_multiplier is None) != (dp_clipping_norm is None):
        raise ConfigError("differential privacy needs both --dp-noise-multiplier and --dp-clipping-norm")
    settings = None
    if home is not None:
        from server.config.settings import load_settings

        settings = load_settings(home)  # fail before training if the home is wrong
    config = FederatedConfig(
        task=task,
        num_clients=clients,
        num_rounds=rounds,
        fraction_fit=fraction_fit,
        local_epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        alpha=alpha,
        strategy=StrategyConfig(name=strategy, proximal_mu=proximal_mu, server_learning_rate=server_lr),  # type: ignore[arg-type]
        secagg=(
            SecAggConfig(
                num_shares=_int_or_fraction(num_shares),
                reconstruction_threshold=_int_or_fraction(reconstruction_threshold),
                clipping_range=clipping_range,
                timeout_s=secagg_timeout_s,
            )
            if secagg
            else None
        ),
        dp=(
            DPConfig(noise_multiplier=dp_noise_multiplier, clipping_norm=dp_clipping_norm)
            if dp_noise_multiplier is not None and dp_clipping_norm is not None
            else None
        ),
        drop_partitions=_ids(drop_clients),
    )
    from server.federated.flower_logs import flower_logs_to

    flower_log = flower_logs_to(log_file if log_file is not None else _default_log_file(home))
    started_at = datetime.now(UTC)
    click.echo(
        f"Training {task} on {clients} simulated devices, {rounds} rounds, {strategy}"
        f"{' + SecAgg+' if secagg else ''}{' + DP' if config.dp else ''}",
        err=True,
    )
    try:
        with click.progressbar(length=rounds, label="rounds", file=sys.stderr) as bar:

            def on_round(outcome: Any) -> None:
                accuracy = outcome.heldout_accuracy
                bar.label = (
                    f"round {outcome.round} {outcome.status}"
                    + (f", held-out accuracy {accuracy:.2%}" if accuracy is not None else "")
                )
                bar.update(1)

            result = run_simulation_engine(
                config,
                on_round=on_round,
                resources=EngineResources(num_cpus=cpus, client_cpus=client_cpus),
            )
    finally:  # named on failure too: that is when the file is read
        click.echo(f"Flower and Ray logs: {flower_log}", err=True)
    summary: dict[str, Any] = {
        "training_run_id": None,
        "task": task,
        "config": result.config,
        "secagg": result.secagg,
        "privacy": result.privacy,
        "metrics": result.metrics_json(),
        "weights_sha256": None,
        "data_fingerprint": result.data_fingerprint,
        "code_version": result.code_version,
        "log_file": str(flower_log),
    }
    if settings is not None:
        from server.db.engine import close_database, open_database
        from server.pipeline.steps import record_training_run

        session_factory = open_database(settings.resolved_database_url)
        try:
            run = record_training_run(settings, session_factory, task, result, started_at)
        finally:
            close_database(session_factory)
        summary["training_run_id"] = run.id
        summary["weights_sha256"] = run.record.weights_sha256
    emit(summary, as_json, format_summary(summary, home))


def _default_log_file(home: Path | None) -> Path:
    if home is not None:
        return home / "logs" / "flower.log"
    return Path("runs") / f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}" / "flower.log"


def _int_or_fraction(value: float) -> int | float:
    if value >= 1 and float(value).is_integer():
        return int(value)
    if 0 < value <= 1:
        return float(value)
    raise ConfigError(f"expected an integer >= 1 or a fraction in (0, 1], got {value}")


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ConfigError(f"--drop-clients takes comma-separated client ids, got {text!r}") from err


def format_summary(summary: dict[str, Any], home: Path | None) -> str:
    metrics = summary["metrics"]
    lines = ["round  status      sampled replied dropped  fit s   held-out acc  federated acc"]
    for r in metrics["rounds"]:
        held = f"{r['heldout_accuracy']:.2%}" if r["heldout_accuracy"] is not None else "-"
        fed = f"{r['federated_accuracy']:.2%}" if r["federated_accuracy"] is not None else "-"
        lines.append(
            f"{r['round']:>5}  {r['status']:<10} {r['sampled']:>8} {r['replied']:>7} "
            f"{r['dropped']:>7} {r['fit_seconds']:>6.2f}   {held:>12}  {fed:>13}"
        )
        if r["status"] != "aggregated":
            lines.append(f"       reason: {r['reason']}")
    if summary["training_run_id"] is not None:
        lines.append(
            f"Recorded training run {summary['training_run_id']} "
            f"(weights sha256 {summary['weights_sha256'][:12]}…).\n"
            f"Next: edgeops model package --from-run {summary['training_run_id']} --home {home}"
        )
    else:
        lines.append("Not recorded (no --home).")
    return "\n".join(lines)
