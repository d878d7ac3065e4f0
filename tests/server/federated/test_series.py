"""A series of runs in one ServerApp (what `bench_federated.py --quick` uses to share one
Simulation Engine): each run starts from fresh server state on the same nodes, so a
SecAgg+ run after a plain one ends exactly where it would alone."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from agent.federated.client_app import make_client_app
from server.federated.config import FederatedConfig, SecAggConfig
from server.federated.local_grid import LocalGrid
from server.federated.result import FederatedResult
from server.federated.server_app import make_series_server_app
from tests.server.federated.support import run_local

pytestmark = [pytest.mark.federated]

QUANTIZATION_ATOL = 1e-4  # SecAgg+'s quantization step, as in test_secagg


def test_a_series_runs_each_config_from_fresh_state_on_the_same_nodes() -> None:
    plain = FederatedConfig(num_clients=4, num_rounds=1, local_epochs=1, secagg=None)
    secure = FederatedConfig(
        num_clients=4,
        num_rounds=1,
        local_epochs=1,
        secagg=SecAggConfig(num_shares=3, reconstruction_threshold=2),
    )
    results: list[FederatedResult] = []
    rounds: list[tuple[int, int, str]] = []
    app = make_series_server_app(
        [plain, secure],
        sink=results.append,
        on_round=lambda index, outcome: rounds.append((index, outcome.round, outcome.status)),
    )
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})

    app(grid=LocalGrid(make_client_app(), 4), context=context)

    assert [r.secagg is not None for r in results] == [False, True]
    assert rounds == [(0, 1, "aggregated"), (1, 1, "aggregated")]
    alone = run_local(secure)
    for in_series, by_itself in zip(results[1].weights, alone.weights, strict=True):
        np.testing.assert_allclose(in_series, by_itself, atol=QUANTIZATION_ATOL)
    np.testing.assert_array_equal(results[1].drift_reference, alone.drift_reference)
