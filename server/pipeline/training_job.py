"""The training job of a pipeline run (started by the runner; see server.pipeline.training).

    python -m server.pipeline.training_job --home HOME --run ID --attempt K

Trains the run's candidate in Flower's Simulation Engine — warm-started from the champion's
weights, SecAgg+ as the policy says, one virtual SuperNode per participant on that device's
own data — with a federated evaluation of candidate and champion on the participants' fresh
labelled data, and records it as a training run tagged with the pipeline run. Exits 0 without
training if the run already has one (a job started twice trains once).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeops.errors import EdgeOpsError
from edgeops.exit_codes import exit_code_for
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.db.tables import Model, ModelVersion, TrainingRun
from server.pipeline.policy import ReleasePolicy
from server.pipeline.store import get_run
from server.pipeline.training import recorded_training_runs, run_dir
from server.registry.artifact_store import ArtifactStore

__all__ = ["PARTICIPANTS_FILE", "champion_training_run", "main"]

logger = logging.getLogger("edgeops.pipeline.training_job")

PARTICIPANTS_FILE = "participants.json"


def champion_training_run(session: Session, model: str, version: int | None) -> TrainingRun | None:
    """The training run the champion version was packaged from (None: none recorded)."""
    if version is None:
        return None
    run_id = session.scalar(
        select(ModelVersion.training_run_id).join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == model, ModelVersion.version == version,
               ModelVersion.training_run_id.is_not(None)).limit(1)
    )
    return session.get(TrainingRun, run_id) if run_id is not None else None


def _feedback_examples(participants: Any) -> int:
    """Labelled examples the participants hold for training as of the manifest's cut-off
    (the sum of counts; nothing else is read from a device's store)."""
    from server.federated.driver import feedback_rows

    return sum(
        feedback_rows(Path(p.feedback_path), participants.feedback_until, "train")
        for p in participants.participants
    )


def _train(settings: ServerSettings, run_id: int, attempt: int) -> None:
    from server.federated.config import FederatedConfig, SecAggConfig, StrategyConfig
    from server.federated.driver import EngineResources, run_simulation_engine
    from server.federated.runs import TrainingRuns

    session_factory = open_database(settings.resolved_database_url)
    try:
        with session_factory() as session:
            if recorded_training_runs(session, run_id):
                logger.info("pipeline run %d already has its training run; nothing to do", run_id)
                return
            run = get_run(session, run_id)
            policy = ReleasePolicy.from_json(run.policy)
            task = session.scalar(select(Model.task).where(Model.name == run.model)) or run.model
            champion = champion_training_run(session, run.model, run.champion_version)
            champion_config = dict(champion.config) if champion is not None else {}
            initial = None
            if policy.retraining.warm_start and champion is not None and champion.weights_sha256:
                initial = str(ArtifactStore(settings.artifacts_dir).path_for(champion.weights_sha256))
        manifest = run_dir(settings, run_id) / PARTICIPANTS_FILE
        from server.federated.participants import read_participants

        participants = read_participants(manifest)
        feedback_examples = _feedback_examples(participants)
        retraining = policy.retraining
        secagg = retraining.secagg and len(participants) >= 3
        config = FederatedConfig(
            task=task,
            num_clients=len(participants),
            num_rounds=retraining.rounds,
            local_epochs=retraining.local_epochs,
            learning_rate=retraining.learning_rate,
            # The champion's partitioning, so each device keeps its own base data.
            seed=int(champion_config.get("seed", 0)),
            alpha=champion_config.get("alpha"),
            strategy=StrategyConfig(name=retraining.strategy),
            secagg=SecAggConfig() if secagg else None,
            initial_weights=initial,
            participants_file=str(manifest),
            fleet_evaluation=True,
        )
        started = datetime.now(UTC)
        result = run_simulation_engine(
            config,
            on_round=lambda r: logger.info(
                "round %d: %s, held-out accuracy %s (%d/%d devices)", r.round, r.status,
                r.heldout_accuracy, r.replied, r.sampled),
            resources=EngineResources(client_cpus=1.0),
        )
        record = TrainingRuns(session_factory, ArtifactStore(settings.artifacts_dir)).record(
            task, result, started, labels={"pipeline_run_id": run_id, "attempt": attempt,
                                       "feedback_examples": feedback_examples}
        )
        logger.info("pipeline run %d: recorded training run %d", run_id, record.id)
    finally:
        close_database(session_factory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.pipeline.training_job",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--attempt", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        _train(load_settings(args.home), args.run, args.attempt)
    except EdgeOpsError as err:
        logger.error("training failed: %s", err)
        return int(exit_code_for(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
