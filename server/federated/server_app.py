"""The EdgeOps ServerApp: Flower's DefaultWorkflow over the legacy strategy path, with
SecAgg+ (`SecAggPlusWorkflow`) as the fit workflow when asked, and a RoundLedger that
checks every round.

A run starts from fresh weights or, with `initial_weights`, from a state_dict file (warm
start from the champion). With `fleet_evaluation`, after the rounds the candidate (final
weights) and the champion (warm-start weights, when there are any) are scored on every
participant's feedback eval split (`server.federated.fleet_eval`); the result carries it.

`make_server_app(config, ...)` is for our own drivers (simulation, tests); `make_server_app()`
without a config reads it from Flower's run config, for `flwr run` and deployment.
`make_series_server_app(configs, ...)` runs several configs one after another in one
ServerApp (one Simulation Engine), for comparisons such as plain vs SecAgg+. The grid
Flower hands the ServerApp is wrapped in a `PollingGrid`, so replies are collected every
0.1 s in deployment too (Flower's deployment grid sleeps 3 s between pulls).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, RecordDict
from flwr.common import NDArrays, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.serverapp import Grid, ServerApp

from edgeops.federated.config import ClientRecipe, read_participants
from edgeops.packaging.lineage import code_version
from edgeops.tasks import Task, load_task
from server.federated.config import FederatedConfig, SecAggConfig
from server.federated.fleet_eval import CANDIDATE, CHAMPION, run_fleet_evaluation
from server.federated.ledger import RoundLedger, RoundOutcome
from server.federated.polling_grid import PollingGrid
from server.federated.privacy import spent
from server.federated.result import FederatedResult, check_progress
from server.federated.secagg_timing import StageTimedSecAggPlus
from server.federated.strategies import build_strategy
from server.federated.task_model import evaluator_for, initial_weights, warm_start_weights

__all__ = ["make_series_server_app", "make_server_app", "run_rounds"]

logger = logging.getLogger(__name__)

ResultSink = Callable[[FederatedResult], None]
RoundCallback = Callable[[RoundOutcome], None]


def recipe_for(config: FederatedConfig) -> Callable[[int], ClientRecipe]:
    base = ClientRecipe(
        task=config.task,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        proximal_mu=config.strategy.proximal_mu if config.strategy.name == "fedprox" else 0.0,
        alpha=config.alpha or 0.0,
        partition_seed=config.seed,
        histogram=config.drift_histogram,
        drop_partitions=",".join(str(p) for p in config.drop_partitions),
        participants_file=config.participants_file or "",
    )
    return lambda server_round: replace(base, server_round=server_round)


def starting_weights(task: Task, config: FederatedConfig) -> tuple[list[str], NDArrays]:
    """The warm-start state_dict if the config names one, else fresh seeded weights."""
    if config.initial_weights is not None:
        return warm_start_weights(task, Path(config.initial_weights))
    return initial_weights(task, config.seed)


def run_rounds(
    grid: Grid,
    context: Context,
    config: FederatedConfig,
    *,
    on_round: RoundCallback | None = None,
    largest_local_examples: int | None = None,
) -> FederatedResult:
    """Run `config.num_rounds` rounds on `grid`; TrainingError if none produced a model."""
    started = time.monotonic()
    task = load_task(config.task)
    dataset = task.load_data()
    names, weights = starting_weights(task, config)
    strategy = build_strategy(config, weights, recipe_for(config))
    ledger = RoundLedger(
        strategy,
        num_model_arrays=len(weights),
        evaluator=evaluator_for(task, dataset),
        secure=config.secagg is not None,
        private=config.dp is not None,
        on_round=on_round,
    )
    secagg: SecAggConfig | None = None
    fit_workflow = default_fit_workflow
    if config.secagg is not None:
        secagg = config.secagg.resolved(config.num_sampled_fit, largest_local_examples)
        fit_workflow = timed_secagg = StageTimedSecAggPlus(
            num_shares=secagg.num_shares,
            reconstruction_threshold=secagg.reconstruction_threshold,
            clipping_range=secagg.clipping_range,
            quantization_range=secagg.quantization_range,
            max_weight=float(secagg.max_weight or 1000.0),
            timeout=secagg.timeout_s,
        )
        ledger.stage_seconds = timed_secagg.stage_seconds
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=config.num_rounds), strategy=ledger
    )
    workflow = DefaultWorkflow(
        fit_workflow=ledger.timed(fit_workflow),
        evaluate_workflow=ledger.closing(default_evaluate_workflow),
    )
    workflow(grid, legacy)
    check_progress(ledger.outcomes, config.num_rounds)
    final = parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True)
    )
    fleet_evaluation = None
    if config.fleet_evaluation:
        fleet_evaluation = _evaluate_fleet(grid, config, task, final, weights)
    return FederatedResult(
        config=config.to_json(),
        rounds=list(ledger.outcomes),
        initial_metrics=ledger.initial_metrics,
        weights=final,
        weight_names=names,
        drift_reference=ledger.drift_reference,
        drift_examples=ledger.drift_examples,
        wall_seconds=round(time.monotonic() - started, 3),
        data_fingerprint=dataset.fingerprint(),
        code_version=code_version(),
        secagg=_secagg_json(secagg),
        privacy=_privacy_json(config, rounds_run=len(ledger.outcomes)),
        fleet_evaluation=fleet_evaluation,
    )


def _evaluate_fleet(
    grid: Grid, config: FederatedConfig, task: Task, final: NDArrays, start: NDArrays
) -> dict[str, Any]:
    """The candidate, and the champion it warm-started from, on the fleet's eval rows."""
    weight_sets = {CANDIDATE: final}
    if config.initial_weights is not None:
        weight_sets[CHAMPION] = start
    participants = read_participants(str(config.participants_file))
    evaluation = run_fleet_evaluation(
        grid,
        weight_sets,
        recipe_for(config)(config.num_rounds),
        cohorts=participants.cohorts,
        num_classes=task.num_classes,
    )
    return evaluation.to_json()


def _privacy_json(config: FederatedConfig, rounds_run: int) -> dict[str, Any] | None:
    """The DP mechanism and the (epsilon, delta) it spent over the rounds that ran."""
    if config.dp is None:
        return None
    return {
        "mechanism": "central DP, client-side fixed clipping, Gaussian noise",
        "clipping_norm": config.dp.clipping_norm,
        "num_sampled_clients": config.num_sampled_fit,
        "noise_stddev": config.dp.noise_multiplier * config.dp.clipping_norm / config.num_sampled_fit,
        **spent(
            config.dp.noise_multiplier,
            config.dp.delta,
            sampling_rate=config.num_sampled_fit / config.num_clients,
            rounds=max(1, rounds_run),
        ),
    }


def _secagg_json(secagg: SecAggConfig | None) -> dict[str, object] | None:
    if secagg is None:
        return None
    return {
        "protocol": "SecAgg+ (flwr SecAggPlusWorkflow + secaggplus_mod)",
        "num_shares": secagg.num_shares,
        "reconstruction_threshold": secagg.reconstruction_threshold,
        "clipping_range": secagg.clipping_range,
        "quantization_range": secagg.quantization_range,
        "max_weight": secagg.max_weight,
        "timeout_s": secagg.timeout_s,
    }


def make_server_app(
    config: FederatedConfig | None = None,
    *,
    sink: ResultSink | None = None,
    sink_factory: Callable[[Mapping[str, Any]], ResultSink | None] | None = None,
    on_round: RoundCallback | None = None,
    largest_local_examples: int | None = None,
) -> ServerApp:
    """A ServerApp running `config` (or the run config Flower passes), handing the result
    to `sink` (or to the sink `sink_factory` makes from the run config). A run without
    progress raises TrainingError inside the ServerApp."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or FederatedConfig.from_run_config(context.run_config)
        result = run_rounds(
            PollingGrid(grid),
            context,
            run_config,
            on_round=on_round,
            largest_local_examples=largest_local_examples,
        )
        target = sink
        if target is None and sink_factory is not None:
            target = sink_factory(context.run_config)
        if target is not None:
            target(result)

    return app


def make_series_server_app(
    configs: Sequence[FederatedConfig],
    *,
    sink: ResultSink,
    on_round: Callable[[int, RoundOutcome], None] | None = None,
    largest_local_examples: Sequence[int | None] | None = None,
) -> ServerApp:
    """A ServerApp running `configs` one after another on the same grid and nodes, each
    from a fresh server state, handing each result to `sink`; `on_round` gets the index
    of the config with each round. The first run that makes no progress raises
    TrainingError and ends the series."""
    largest = list(largest_local_examples or [None] * len(configs))
    if len(largest) != len(configs):
        raise ValueError("largest_local_examples needs one entry per config")
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        polling = PollingGrid(grid)
        for index, config in enumerate(configs):
            fresh = Context(
                run_id=context.run_id,
                node_id=context.node_id,
                node_config=context.node_config,
                state=RecordDict(),
                run_config=context.run_config,
            )
            report = None if on_round is None else _tagged(on_round, index)
            sink(
                run_rounds(
                    polling, fresh, config, on_round=report, largest_local_examples=largest[index]
                )
            )

    return app


def _tagged(on_round: Callable[[int, RoundOutcome], None], index: int) -> RoundCallback:
    return lambda outcome: on_round(index, outcome)
