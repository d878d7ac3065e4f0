"""Benchmark: federated training with SecAgg+ against plain FedAvg, and against
centralized training, on the same data in the same command.

    python benchmarks/bench_federated.py [--quick]

Full: digits, 50 simulated devices, Dirichlet alpha 0.5, 10 rounds, Flower Simulation
Engine (Ray) with one CPU per client actor, each arm in its own engine. --quick: 10
devices, 4 rounds, both arms one after the other (plain first) in ONE engine: Ray starts
once and the SecAgg+ run reuses the plain run's warm client actors (under a minute on 2
cores; `--engines` picks either way in either mode). The two federated runs differ only in
the fit workflow (DefaultWorkflow's plain fit vs SecAggPlusWorkflow). Per-round time is the
fit phase of rounds 2..; round 1 is reported separately (it pays Ray's actor start-up: in
each arm with separate engines, in the plain arm only with a shared one). Centralized
training is the task's own recipe (30 epochs, Adam) on the union of the devices' partitions
(the whole training split). Peak RSS sums the process tree (driver, Ray's
raylet/GCS and worker actors), sampled every 0.25 s.

Human-readable lines go first; the LAST line is one JSON object:
    secagg_round_ratio, secagg_round_s, plain_round_s, federated_accuracy,
    centralized_accuracy, peak_rss_mb  (+ details: stage profile, round-1 start-up, config)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import psutil

MODES: dict[str, dict[str, Any]] = {
    "quick": {"clients": 10, "rounds": 4},
    "full": {"clients": 50, "rounds": 10},
}


class PeakRss:
    """Peak resident memory of this process and all its descendants."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.peak_bytes = 0
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 clients, 4 rounds")
    # Devices hold ~27 rows each at 50 clients: batch 8 gives 4 steps per local epoch.
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--num-shares", type=float, default=5)
    parser.add_argument("--threshold", type=float, default=3)
    parser.add_argument("--client-cpus", type=float, default=1.0)
    parser.add_argument(
        "--engines",
        choices=("shared", "separate"),
        help="run both arms in one Simulation Engine (one Ray start, warm actors: the "
        "default with --quick) or each in its own (the default otherwise, so each arm's "
        "round 1 pays Ray's actor start-up)",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)

    from edgeops.packaging.source import train_model
    from edgeops.tasks import TrainConfig, load_task
    from server.federated.config import FederatedConfig, SecAggConfig
    from server.federated.driver import EngineResources, run_simulation_engine_series

    def as_number(value: float) -> int | float:
        return int(value) if value >= 1 else float(value)

    base = FederatedConfig(
        task="digits",
        num_clients=mode["clients"],
        num_rounds=mode["rounds"],
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        alpha=args.alpha,
        secagg=None,
        drift_histogram=True,
    )
    secure = replace(
        base,
        secagg=SecAggConfig(
            num_shares=as_number(args.num_shares),
            reconstruction_threshold=as_number(args.threshold),
        ),
    )
    resources = EngineResources(client_cpus=args.client_cpus)
    say = lambda text: print(text, flush=True)  # noqa: E731

    arms = {"plain": base, "secagg": secure}
    engines = args.engines or ("shared" if args.quick else "separate")
    groups = [list(arms)] if engines == "shared" else [[name] for name in arms]

    def report(name: str, r: Any) -> None:
        if r.round == 1:
            arm = arms[name]
            say(f"{name}: {arm.num_clients} clients, {arm.num_rounds} rounds, alpha {arm.alpha}")
        say(
            f"  round {r.round:>2} {r.status} fit {r.fit_seconds:6.2f} s  "
            f"held-out {r.heldout_accuracy:.4f}"
            + (f"  stages {r.stage_seconds}" if r.stage_seconds else "")
        )

    with PeakRss() as rss:
        started = time.monotonic()
        runs: dict[str, tuple[Any, float]] = {}
        for group in groups:
            results = run_simulation_engine_series(
                [arms[name] for name in group],
                resources=resources,
                on_round=lambda index, r, group=group: report(group[index], r),
            )
            for name, result in zip(group, results, strict=True):
                runs[name] = (result, result.wall_seconds)
        engine_wall_s = time.monotonic() - started

        task = load_task("digits")
        dataset = task.load_data()
        # The task's own recipe (what `edgeops model package` trains) on the union of the
        # devices' partitions, i.e. the whole training split.
        central_config = TrainConfig(seed=0)
        say(f"centralized: {central_config.epochs} epochs on the union of the partitions ({len(dataset.y_train)} rows)")
        central = train_model(task, dataset, central_config)
        centralized_accuracy = task.evaluate(central.model, dataset.x_test, dataset.y_test)["accuracy"]

    def steady(result: Any) -> float:
        later = [r.fit_seconds for r in result.rounds if r.round > 1] or [r.fit_seconds for r in result.rounds]
        return statistics.median(later)

    plain, secagg = runs["plain"][0], runs["secagg"][0]
    stage_rounds = [r.stage_seconds for r in secagg.rounds if r.round > 1 and r.stage_seconds]
    profile = {
        stage: round(statistics.median(s[stage] for s in stage_rounds), 4)
        for stage in (stage_rounds[0] if stage_rounds else {})
    }
    summary = {
        "secagg_round_ratio": round(steady(secagg) / steady(plain), 3),
        "secagg_round_s": round(steady(secagg), 4),
        "plain_round_s": round(steady(plain), 4),
        "federated_accuracy": secagg.final_metrics["heldout_accuracy"],
        "plain_federated_accuracy": plain.final_metrics["heldout_accuracy"],
        "centralized_accuracy": centralized_accuracy,
        "accuracy_gap_pp": round((centralized_accuracy - (secagg.final_metrics["heldout_accuracy"] or 0)) * 100, 2),
        "peak_rss_mb": round(rss.peak_bytes / 2**20, 1),
        "secagg_stage_median_s": profile,
        "secagg_resolved": secagg.secagg,
        "round1_fit_s": {"plain": plain.rounds[0].fit_seconds, "secagg": secagg.rounds[0].fit_seconds},
        "run_wall_s": {name: round(wall, 2) for name, (_, wall) in runs.items()},
        "engine_wall_s": round(engine_wall_s, 2),
        "engines": engines,
        "mode": "quick" if args.quick else "full",
        "clients": mode["clients"],
        "rounds": mode["rounds"],
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "alpha": args.alpha,
        "cpus": os.cpu_count(),
    }
    say(
        f"per round (median of rounds 2..): SecAgg+ {summary['secagg_round_s']} s, plain "
        f"{summary['plain_round_s']} s, ratio {summary['secagg_round_ratio']}x; accuracy federated "
        f"{summary['federated_accuracy']:.4f} vs centralized {centralized_accuracy:.4f}; peak RSS "
        f"{summary['peak_rss_mb']} MB"
    )
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
