"""Helpers: run the real ServerApp workflows against real ClientApps in-process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Context, Message, RecordDict

from agent.federated.client_app import make_client_app
from server.federated.config import FederatedConfig
from server.federated.local_grid import LocalGrid
from server.federated.result import FederatedResult
from server.federated.server_app import run_rounds


def run_local(
    config: FederatedConfig,
    *,
    observer: Callable[[Message, Message], None] | None = None,
    extra_mods: Sequence[Any] = (),
) -> FederatedResult:
    grid = LocalGrid(make_client_app(extra_mods), config.num_clients, observer=observer)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return run_rounds(grid, context, config)
