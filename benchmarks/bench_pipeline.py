"""Benchmark: the continuous-delivery loop on a laptop fleet, from drift to recovery.

    python benchmarks/bench_pipeline.py [--quick]

One real run of simulations/loop.py: Mosquitto, `edgeops server run` (monitor and pipeline
runner inside), agents labelling part of their traffic, Flower's Simulation Engine with
SecAgg+ for every training. A champion is trained federatedly and rolled out; then a stuck
sensor offset (+0.5 on every pixel, clipped) hits the `north` cohort. The server notices from
the sketches, retrains warm-started on the devices' fresh labelled data, gates, signs,
canaries against the control cohort and promotes, all on its own (automatic approval).

The baseline, measured in the same run, is what the fleet would have without the loop: the
champion on the drifted inputs (`accuracy_during`). Accuracies are on each cohort's share of
the task's held-out split, never on data a device trained on or labelled.

--quick: 6 devices, 2 champion rounds; without it: 10 devices, 3 rounds.

Human-readable lines go first; the LAST line is one JSON object:
    detect_s, candidate_s, recovered_s (seconds from the drift's onset), accuracy_before,
    accuracy_during, accuracy_after, control_accuracy_before, control_accuracy_after,
    feedback_labels_used, status, wall_s
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from simulations.loop import LoopConfig, laptop_policy, run_loop

KEYS = ("detect_s", "candidate_s", "recovered_s", "accuracy_before", "accuracy_during",
        "accuracy_after", "control_accuracy_before", "control_accuracy_after",
        "feedback_labels_used")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 devices: under two minutes")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the run's folder here (default: a temporary one)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        out = args.out or Path(tmp) / "loop"
        config = LoopConfig(
            out_dir=out,
            policy_toml=laptop_policy(rounds=2 if args.quick else 3),
            devices=6 if args.quick else 10,
            champion_rounds=2 if args.quick else 3,
            baseline_s=6.0 if args.quick else 10.0,
        )
        result = run_loop(config, lambda line: print(line, file=sys.stderr, flush=True))
    figures = {key: result.figures.get(key) for key in KEYS}
    before, after = figures["accuracy_before"], figures["accuracy_after"]
    c_before, c_after = figures["control_accuracy_before"], figures["control_accuracy_after"]
    print(f"pipeline run {result.run['id']}: {result.run['status']} ({result.run.get('reason')})")
    print(f"drifted cohort: {before:.3f} before, {figures['accuracy_during']:.3f} during "
          f"(the champion: no loop), {after:.3f} after; target after >= before - 0.03: "
          f"{'met' if after >= before - 0.03 else 'MISSED'}")
    print(f"control cohorts: {c_before:.3f} before, {c_after:.3f} after; target no more than "
          f"0.01 lost: {'met' if c_after >= c_before - 0.01 else 'MISSED'}")
    print(json.dumps({**figures, "status": result.run["status"],
                      "wall_s": round(time.monotonic() - started, 1)}))
    return 0 if result.run["status"] == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
