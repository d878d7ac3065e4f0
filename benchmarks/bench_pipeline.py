"""Benchmark: the continuous-delivery loop on a laptop fleet, from drift to recovery.

    python benchmarks/bench_pipeline.py [--quick]

One real run of the `drift-recovery` scenario (simulations/scenarios/drift-recovery.toml):
Mosquitto, `edgeops server run` (monitor and pipeline runner inside), agents in two processes
labelling their traffic, Flower's Simulation Engine with SecAgg+ for every training. A champion
is trained federatedly and rolled out; then a stuck sensor offset (+0.5 on every pixel,
clipped) hits the `north` cohort. The server notices from the sketches, retrains
warm-started on the devices' fresh labelled data, gates, signs, canaries against the control
cohort and promotes, on its own (automatic approval).

The baseline, measured in the same run, is what the fleet would have without the loop: the
champion on the drifted inputs (`accuracy_during`). Accuracies are on each cohort's share of
the task's held-out split, never on data a device trained on or labelled.

--quick: the scenario's 6 devices; without it: 12 devices (cohorts keep their shares).

Human-readable lines go first; the LAST line is one JSON object:
    detect_s, candidate_s, recovered_s (seconds from the drift's onset), accuracy_before,
    accuracy_during, accuracy_after, control_accuracy_before, control_accuracy_after
    (fractions), feedback_labels_used, status, wall_s
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from simulations.engine import run_scenario
from simulations.scenario import load_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 devices: under two minutes")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the run's folder here (default: a temporary one)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    scenario = load_scenario("drift-recovery")
    if not args.quick:
        scenario = scenario.override(devices=12)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        out = args.out or Path(tmp) / "run"
        run = run_scenario(scenario, out, lambda line: print(line, file=sys.stderr, flush=True))
    timeline, summary = run.timeline, run.timeline["summary"]
    pipeline = timeline["run"] or {}
    onset = next(iter(timeline["onsets"].values()), None)
    gated = next((e["at"] for e in pipeline.get("timeline", []) if e["status"] == "gated"), None)
    figures = {
        "detect_s": summary["detection_delay_s"],
        "candidate_s": round(gated - timeline["started_at"] - onset, 1)
        if gated is not None and onset is not None else None,
        "recovered_s": summary["recovery_s"],
        "accuracy_before": summary["accuracy_before"],
        "accuracy_during": summary["accuracy_during"],
        "accuracy_after": summary["accuracy_after"],
        "control_accuracy_before": summary["control_accuracy_before"],
        "control_accuracy_after": summary["control_accuracy_after"],
        "feedback_labels_used": (pipeline.get("results", {}).get("training") or {}).get(
            "feedback_examples"),
    }
    before, after = figures["accuracy_before"], figures["accuracy_after"]
    c_before, c_after = figures["control_accuracy_before"], figures["control_accuracy_after"]
    print(f"pipeline run: {pipeline.get('status')} ({pipeline.get('reason')})")
    if None not in (before, after, c_before, c_after):
        print(f"drifted cohort: {before:.3f} before, {figures['accuracy_during']:.3f} during "
              f"(the champion: no loop), {after:.3f} after; target after >= before - 0.03: "
              f"{'met' if after >= before - 0.03 else 'MISSED'}")
        print(f"control cohorts: {c_before:.3f} before, {c_after:.3f} after; target no more "
              f"than 0.01 lost: {'met' if c_after >= c_before - 0.01 else 'MISSED'}")
    print(json.dumps({**figures, "status": pipeline.get("status"),
                      "wall_s": round(time.monotonic() - started, 1)}))
    return 0 if pipeline.get("status") == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
