"""Run a federated training in Flower's Simulation Engine (Ray): one virtual SuperNode per
device, each training on its own partition of the task's data or, with a participants
manifest, as one listed device on its base partition plus its own feedback store.

The ClientApp is loaded by reference, the way Flower loads `clientapp` from an app's
pyproject: the server package never imports device code, and any ClientApp that speaks the
same recipe can be simulated (`client_app="package.module:attribute"`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.errors import ConfigError, MissingDependencyError, TrainingError
from edgeops.federated.config import FeedbackSplit, feedback_split, read_participants
from edgeops.tasks import load_task, partition_devices
from server.federated.config import FederatedConfig
from server.federated.ledger import RoundOutcome
from server.federated.result import FederatedResult

__all__ = [
    "DEFAULT_CLIENT_APP",
    "EngineResources",
    "feedback_rows",
    "load_client_app",
    "run_simulation_engine",
    "run_simulation_engine_series",
]

logger = logging.getLogger(__name__)

DEFAULT_CLIENT_APP = "agent.federated.client_app:app"


@dataclass(frozen=True)
class EngineResources:
    """Ray sizing: `num_cpus` for the whole engine (None: this machine's cores), and the
    CPUs each virtual client reserves (so num_cpus / client_cpus actors run at once)."""

    num_cpus: int | None = None
    client_cpus: float = 1.0

    def backend_config(self) -> dict[str, Any]:
        cpus = self.num_cpus or os.cpu_count() or 1
        if self.client_cpus <= 0 or self.client_cpus > cpus:
            raise ConfigError(f"client_cpus must be in (0, {cpus}], got {self.client_cpus}")
        return {
            "client_resources": {"num_cpus": self.client_cpus, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cpus,
                "num_gpus": 0,
                "include_dashboard": False,
                "logging_level": logging.ERROR,
                "log_to_driver": False,
            },
        }


def load_client_app(reference: str) -> Any:
    """Resolve `module:attribute` to a ClientApp (MissingDependencyError without the extra)."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise MissingDependencyError(
            f"cannot load the ClientApp {reference!r} ({err}); install 'edgeops[federated]'"
        ) from err
    try:
        return getattr(module, attribute)
    except AttributeError as err:
        raise ConfigError(f"{module_name!r} has no ClientApp {attribute!r}") from err


def run_simulation_engine(
    config: FederatedConfig,
    *,
    on_round: Callable[[RoundOutcome], None] | None = None,
    resources: EngineResources = EngineResources(),
    client_app: str | Any = DEFAULT_CLIENT_APP,
) -> FederatedResult:
    """Train with `config.num_clients` virtual SuperNodes; TrainingError if no round
    produced a model (Flower itself returns normally in that case). A warm-start file that
    does not fit the task's model is a ConfigError before the engine starts."""
    from flwr.simulation import run_simulation

    from server.federated.server_app import make_server_app

    _check_warm_start(config)
    results: list[FederatedResult] = []
    server_app = make_server_app(
        config,
        sink=results.append,
        on_round=on_round,
        largest_local_examples=_largest_partition(config),
    )
    _run_engine(run_simulation, server_app, config.num_clients, resources, client_app)
    if not results:
        raise TrainingError("the ServerApp ended without a result; nothing was registered")
    return results[0]


def run_simulation_engine_series(
    configs: Sequence[FederatedConfig],
    *,
    on_round: Callable[[int, RoundOutcome], None] | None = None,
    resources: EngineResources = EngineResources(),
    client_app: str | Any = DEFAULT_CLIENT_APP,
) -> list[FederatedResult]:
    """Several runs one after another in one Simulation Engine: Ray starts once and the
    client actors stay up (their imports done) from one run to the next, so runs that
    are compared (plain vs SecAgg+) share the same workers. Every config needs the same
    number of clients (the engine's virtual SuperNodes); each run starts from its own
    initial weights. `on_round` gets the index of the run with each round."""
    from flwr.simulation import run_simulation

    from server.federated.server_app import make_series_server_app

    if not configs:
        raise ConfigError("a series needs at least one run")
    if len({c.num_clients for c in configs}) != 1:
        raise ConfigError("every run of a series needs the same number of clients")
    for config in configs:
        _check_warm_start(config)
    results: list[FederatedResult] = []
    server_app = make_series_server_app(
        configs,
        sink=results.append,
        on_round=on_round,
        largest_local_examples=[_largest_partition(c) for c in configs],
    )
    _run_engine(run_simulation, server_app, configs[0].num_clients, resources, client_app)
    if len(results) != len(configs):
        raise TrainingError(
            f"the ServerApp ended after {len(results)} of {len(configs)} runs; "
            "nothing was registered"
        )
    return results


def _check_warm_start(config: FederatedConfig) -> None:
    if config.initial_weights is not None:
        from server.federated.task_model import warm_start_weights

        warm_start_weights(load_task(config.task), Path(config.initial_weights))


def _largest_partition(config: FederatedConfig) -> int:
    """The most training rows a client has: SecAgg+'s max_weight must cover it. With a
    participants manifest, a base partition plus that device's stored feedback (counted,
    an upper bound on its train side; nothing else is read)."""
    labels = load_task(config.task).load_data().y_train
    if config.participants_file is None:
        parts = partition_devices(labels, config.num_clients, config.alpha, config.seed)
        return max(len(p) for p in parts)
    manifest = read_participants(config.participants_file)
    parts = partition_devices(labels, manifest.num_partitions, config.alpha, config.seed)
    return max(
        len(parts[p.partition]) + feedback_rows(Path(p.feedback_path), manifest.feedback_until)
        for p in manifest.participants
    )


def feedback_rows(path: Path, until: float | None = None, split: FeedbackSplit | None = None,
                  since: float | None = None) -> int:
    """Rows in a device's feedback store (labelled after `since` and by `until`, on the
    `split` side; 0 if it has none yet), read-only: a count is all the server takes from a
    device's file."""
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            ids = [row[0] for row in db.execute(
                "SELECT prediction_id FROM examples WHERE created_at <= ? AND created_at > ?",
                (until if until is not None else float("inf"),
                 since if since is not None else float("-inf")),
            )]
    except sqlite3.Error as err:
        raise ConfigError(f"cannot count the feedback examples in {path}: {err}") from err
    return len(ids) if split is None else sum(feedback_split(i) == split for i in ids)


def _run_engine(
    run_simulation: Callable[..., None],
    server_app: Any,
    num_supernodes: int,
    resources: EngineResources,
    client_app: str | Any,
) -> None:
    app = load_client_app(client_app) if isinstance(client_app, str) else client_app
    try:
        run_simulation(
            server_app=server_app,
            client_app=app,
            num_supernodes=num_supernodes,
            backend_config=resources.backend_config(),
        )
    except RuntimeError as err:
        _shutdown_ray()  # a crashed engine can leave Ray's node running and the process hung
        cause = _domain_cause(err)
        if cause is not None:
            raise cause from err
        raise TrainingError(f"the Flower simulation failed: {err}") from err


def _domain_cause(err: BaseException) -> BaseException | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (TrainingError, ConfigError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as err:  # best effort while already failing
        logger.debug("ray.shutdown() failed: %s", err)
