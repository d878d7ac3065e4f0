"""Flower strategies by name, with their parameters, optionally wrapped for central DP.

Only `flwr.server.strategy` (the legacy family) is used: it is the one SecAgg+ drives in
flwr 1.42 (`flwr.serverapp.strategy` cannot run SecAggPlusWorkflow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.common import Metrics, NDArrays, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from edgeops.federated.config import ClientRecipe
from server.federated.config import FederatedConfig

__all__ = ["build_strategy", "weighted_average"]


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Each numeric metric averaged with the clients' example counts as weights."""
    total = sum(n for n, _ in metrics)
    if total == 0:
        return {}
    names = {name for _, m in metrics for name, v in m.items() if isinstance(v, (int, float))}
    return {
        name: sum(n * float(m.get(name, 0.0)) for n, m in metrics) / total for name in sorted(names)
    }


def build_strategy(
    config: FederatedConfig,
    initial_weights: NDArrays,
    recipe_for_round: Callable[[int], ClientRecipe],
) -> Strategy:
    """The configured strategy (FedAvg, FedProx or FedAdam), DP-wrapped when asked.

    Every fit/evaluate config carries the round's ClientRecipe; all `num_clients` must be
    connected before a round starts.
    """

    def round_config(server_round: int) -> dict[str, Scalar]:
        return recipe_for_round(server_round).to_config()

    common: dict[str, Any] = {
        "fraction_fit": config.fraction_fit,
        "fraction_evaluate": config.fraction_evaluate,
        "min_fit_clients": config.num_sampled_fit,
        "min_evaluate_clients": max(1, int(config.num_clients * config.fraction_evaluate)),
        "min_available_clients": config.num_clients,
        "on_fit_config_fn": round_config,
        "on_evaluate_config_fn": round_config,
        "initial_parameters": _parameters(initial_weights),
        "fit_metrics_aggregation_fn": weighted_average,
        "evaluate_metrics_aggregation_fn": weighted_average,
        "accept_failures": True,
    }
    settings = config.strategy
    strategy: Strategy
    if settings.name == "fedavg":
        strategy = FedAvg(**common)
    elif settings.name == "fedprox":
        strategy = FedProx(**common, proximal_mu=settings.proximal_mu)
    else:
        strategy = FedAdam(
            **common,
            eta=settings.server_learning_rate,
            eta_l=config.learning_rate,
            beta_1=settings.beta_1,
            beta_2=settings.beta_2,
            tau=settings.tau,
        )
    if config.dp is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=config.dp.noise_multiplier,
            clipping_norm=config.dp.clipping_norm,
            num_sampled_clients=config.num_sampled_fit,
        )
    return strategy


def _parameters(weights: NDArrays) -> Parameters:
    return ndarrays_to_parameters(weights)
