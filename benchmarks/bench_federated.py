"""Benchmark: federated training with SecAgg+ against plain FedAvg, and against
centralized training, on the same data in the same command.

    python benchmarks/bench_federated.py [--quick]

Full: digits, 50 simulated devices, Dirichlet alpha 0.5, 20 rounds, Flower Simulation
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

Privacy arms (issue 19 item 6; on by default in full mode, `--privacy` in quick mode, where
they push the bench past a minute): plain FedAvg with central DP (client-side fixed
clipping at --clipping-norm, Gaussian noise) at each of --epsilons (default 1, 3, 8). Each
arm's noise multiplier is the smallest that keeps epsilon within the target at --delta for
the run's rounds and client sampling rate (--fraction-fit), by the dp-accounting RDP
accountant (server.federated.privacy.noise_for_epsilon); the epsilon each run then
recorded is reported too. They run after the two arms above (in the SecAgg+ engine with
shared engines, in one engine of their own otherwise) and compare with the non-private
plain run, `plain_federated_accuracy`.

Human-readable lines go first; the LAST line is one JSON object:
    secagg_round_ratio, secagg_round_s, plain_round_s, federated_accuracy,
    centralized_accuracy, peak_rss_mb, dp_accuracy_eps1, dp_accuracy_eps3, dp_accuracy_eps8,
    dp_delta (the dp keys null without privacy arms)
    (+ details: stage profile, round-1 start-up, DP noise multipliers, config)
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
    "full": {"clients": 50, "rounds": 20},  # 10 rounds: 2.4 pp from centralized; 20: 1.6
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
    parser.add_argument("--rounds", type=int, default=0,
                        help="federated rounds (default: 4 with --quick, 20 otherwise)")
    parser.add_argument("--strategy", choices=("fedavg", "fedprox", "fedadam"), default="fedavg")
    parser.add_argument("--server-lr", type=float, default=1e-2, help="fedadam's eta")
    parser.add_argument("--proximal-mu", type=float, default=0.01, help="fedprox's mu")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--num-shares", type=float, default=5)
    parser.add_argument("--threshold", type=float, default=3)
    parser.add_argument("--client-cpus", type=float, default=1.0)
    parser.add_argument("--fraction-fit", type=float, default=1.0)
    parser.add_argument(
        "--privacy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the DP arms (default: on in full mode, off with --quick)",
    )
    parser.add_argument("--epsilons", default="1,3,8", help="DP arms' target epsilons")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clipping-norm", type=float, default=2.0)
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
    from server.federated.config import DPConfig, FederatedConfig, SecAggConfig, StrategyConfig
    from server.federated.driver import EngineResources, run_simulation_engine_series
    from server.federated.privacy import noise_for_epsilon

    def as_number(value: float) -> int | float:
        return int(value) if value >= 1 else float(value)

    base = FederatedConfig(
        task="digits",
        num_clients=mode["clients"],
        num_rounds=args.rounds or mode["rounds"],
        strategy=StrategyConfig(name=args.strategy, server_learning_rate=args.server_lr,
                                proximal_mu=args.proximal_mu),
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        alpha=args.alpha,
        fraction_fit=args.fraction_fit,
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
    privacy = args.privacy if args.privacy is not None else not args.quick
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()] if privacy else []
    sampling_rate = base.num_sampled_fit / base.num_clients
    for target in epsilons:
        noise = noise_for_epsilon(target, sampling_rate, base.num_rounds, args.delta)
        dp = DPConfig(noise_multiplier=noise, clipping_norm=args.clipping_norm, delta=args.delta)
        arms[f"dp_eps{target:g}"] = replace(base, dp=dp)
    engines = args.engines or ("shared" if args.quick else "separate")
    private = [name for name in arms if name.startswith("dp_")]
    if engines == "shared":
        groups = [list(arms)]
    else:
        groups = [["plain"], ["secagg"], *([private] if private else [])]

    def report(name: str, r: Any) -> None:
        if r.round == 1:
            arm = arms[name]
            say(
                f"{name}: {arm.num_clients} clients, {arm.num_rounds} rounds, alpha {arm.alpha}"
                + (f", DP noise multiplier {arm.dp.noise_multiplier:.4f}" if arm.dp else "")
            )
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
        **{f"dp_accuracy_eps{e:g}": None for e in (1, 3, 8)},
        **{
            f"dp_accuracy_{name[3:]}": runs[name][0].final_metrics["heldout_accuracy"]
            for name in private
        },
        "dp_delta": args.delta if private else None,
        "dp_runs": {
            name: {
                key: runs[name][0].privacy[key]
                for key in ("epsilon", "noise_multiplier", "sampling_rate", "rounds")
            }
            for name in private
        },
        "dp_clipping_norm": args.clipping_norm if private else None,
        "secagg_stage_median_s": profile,
        "secagg_resolved": secagg.secagg,
        "round1_fit_s": {"plain": plain.rounds[0].fit_seconds, "secagg": secagg.rounds[0].fit_seconds},
        "run_wall_s": {name: round(wall, 2) for name, (_, wall) in runs.items()},
        "engine_wall_s": round(engine_wall_s, 2),
        "engines": engines,
        "mode": "quick" if args.quick else "full",
        "clients": mode["clients"],
        "rounds": base.num_rounds,
        "strategy": args.strategy,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "alpha": args.alpha,
        "fraction_fit": args.fraction_fit,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
    }
    say(
        f"per round (median of rounds 2..): SecAgg+ {summary['secagg_round_s']} s, plain "
        f"{summary['plain_round_s']} s, ratio {summary['secagg_round_ratio']}x; accuracy federated "
        f"{summary['federated_accuracy']:.4f} vs centralized {centralized_accuracy:.4f}; peak RSS "
        f"{summary['peak_rss_mb']} MB"
    )
    for name in private:
        say(
            f"{name}: accuracy {runs[name][0].final_metrics['heldout_accuracy']:.4f} at recorded "
            f"epsilon {runs[name][0].privacy['epsilon']} (delta {args.delta}) vs non-private "
            f"{summary['plain_federated_accuracy']:.4f}"
        )
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
