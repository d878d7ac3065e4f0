"""Where a ServerApp started by Flower's own tools (`flwr run`, a deployed SuperLink) puts
its result: the registry of the server home named by the run config's `server-home`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.federated.result import FederatedResult

__all__ = ["SERVER_HOME_KEY", "registry_sink", "registry_sink_from_run_config"]

logger = logging.getLogger(__name__)

SERVER_HOME_KEY = "server-home"


def registry_sink(home: Path, task_spec: str) -> Callable[[FederatedResult], None]:
    started_at = datetime.now(UTC)

    def record(result: FederatedResult) -> None:
        from server.config.settings import load_settings
        from server.db.engine import close_database, open_database
        from server.federated.runs import TrainingRuns
        from server.registry.artifact_store import ArtifactStore

        settings = load_settings(home)
        factory = open_database(settings.resolved_database_url)
        try:
            run = TrainingRuns(factory, ArtifactStore(settings.artifacts_dir)).record(
                task_spec, result, started_at
            )
        finally:
            close_database(factory)
        logger.warning("recorded training run %d in %s", run.id, home)

    return record


def registry_sink_from_run_config(
    run_config: Mapping[str, Any],
) -> Callable[[FederatedResult], None] | None:
    home = run_config.get(SERVER_HOME_KEY)
    if not home:
        logger.warning("no %r in the run config: the result is not recorded", SERVER_HOME_KEY)
        return None
    return registry_sink(Path(str(home)), str(run_config.get("task", "digits")))
