"""Pure parts: the run config round trip, the per-round recipe, the histogram arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.errors import ConfigError, PayloadError
from edgeops.federated.config import ClientRecipe
from edgeops.federated.histograms import local_frequencies, summed_counts
from server.federated.config import DPConfig, FederatedConfig, SecAggConfig, StrategyConfig

pytestmark = [pytest.mark.federated]


def test_run_config_round_trips_through_flowers_flat_keys() -> None:
    config = FederatedConfig(
        num_clients=7,
        num_rounds=3,
        alpha=0.5,
        strategy=StrategyConfig(name="fedadam", server_learning_rate=0.05),
        secagg=SecAggConfig(num_shares=5, reconstruction_threshold=3, timeout_s=30.0),
        dp=DPConfig(noise_multiplier=0.3, clipping_norm=4.0),
        drop_partitions=(1, 2),
    )
    flat = config.run_config()
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert FederatedConfig.from_run_config(flat) == config
    assert FederatedConfig.from_run_config({**flat, "secagg.enabled": False}).secagg is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clients": 2},  # SecAgg+ needs 3
        {"alpha": 0.0},
        {"drop_partitions": (10,)},
        {"strategy": "fedsgd"},
    ],
)
def test_bad_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        if kwargs.get("strategy"):
            StrategyConfig(name=kwargs["strategy"])
        else:
            FederatedConfig(**kwargs)


def test_secagg_resolution_never_asks_for_more_shares_than_clients() -> None:
    resolved = SecAggConfig(num_shares=5, reconstruction_threshold=3).resolved(4, 337)
    assert resolved.num_shares == 1.0 and resolved.reconstruction_threshold == pytest.approx(0.6)
    assert resolved.max_weight == 337.0
    assert SecAggConfig().resolved(50, None).num_shares == 5


def test_client_recipe_round_trips_and_rejects_wrong_types() -> None:
    recipe = ClientRecipe(task="digits", epochs=3, proximal_mu=0.1, drop_partitions="0,4")
    assert ClientRecipe.from_config(recipe.to_config()) == recipe
    assert recipe.dropped(4) and not recipe.dropped(1)
    with pytest.raises(PayloadError):
        ClientRecipe.from_config({"edgeops.epochs": "many"})


def test_weighted_frequencies_sum_to_exact_counts() -> None:
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 1, 11)
    parts = [rng.random((n, 4)) for n in (3, 50, 17)]
    expected = sum(np.stack([np.histogram(p[:, j], edges)[0] for j in range(4)]) for p in parts)
    replies = [(local_frequencies(p, edges), len(p)) for p in parts]
    np.testing.assert_array_equal(summed_counts(replies), expected)
    # What SecAgg+ hands every reply: the example-weighted mean, identical for all.
    total = sum(len(p) for p in parts)
    mean = sum(f * n for f, n in replies) / total
    np.testing.assert_array_equal(summed_counts([(mean, len(p)) for p in parts]), expected)
