"""Helpers: run the real ServerApp workflows against real ClientApps in-process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
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


def recorded_training_runs(home: Path) -> list[dict]:
    """The training runs in the registry of the server home `home`, as JSON."""
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.federated.runs import TrainingRuns
    from server.registry.artifact_store import ArtifactStore

    settings = load_settings(home)
    factory = open_database(settings.resolved_database_url)
    try:
        return [r.to_json() for r in TrainingRuns(factory, ArtifactStore(settings.artifacts_dir)).list()]
    finally:
        close_database(factory)
