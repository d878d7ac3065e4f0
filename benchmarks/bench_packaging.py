"""Benchmark: package the digits task and compare int8 with its fp32 baseline.

    python benchmarks/bench_packaging.py [--quick]

Trains the digits model, exports it to ONNX fp32, quantizes it to int8 (static QDQ) and
measures both with onnxruntime in the same run: the fp32 model is the baseline. --quick
trains 10 epochs instead of 30 and times 200 single-sample runs instead of 2,000.
Training runs on one torch thread (--torch-threads): on a busy 2-core machine torch's
default thread pool spins against other processes and one epoch can take 40x longer.

Human-readable lines go first; the LAST line is one JSON object:
    size_ratio, fp32_accuracy, int8_accuracy, agreement, fp32_p50_us, int8_p50_us
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from edgeops.packaging import package_model
from edgeops.tasks import TrainConfig

MODES = {
    "quick": {"epochs": 10, "latency_runs": 200},
    "full": {"epochs": 30, "latency_runs": 2000},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="under a minute: fewer epochs and runs"
    )
    parser.add_argument("--quantization", choices=("static", "dynamic"), default="static")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1, help="training threads")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = MODES[mode]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-packaging-") as scratch:
        result = package_model(
            "digits",
            Path(scratch) / "package-digits",
            train_config=TrainConfig(
                epochs=settings["epochs"], seed=args.seed, num_threads=args.torch_threads
            ),
            quantization=args.quantization,
            latency_runs=settings["latency_runs"],
            progress=lambda step: print(f"  {step}...", flush=True),
        )
    elapsed_s = time.perf_counter() - started
    report = result.data
    sizes, accuracy, latency = report["sizes_bytes"], report["accuracy"], report["p50_latency_us"]

    print(
        f"mode {mode}: {settings['epochs']} epochs, {settings['latency_runs']} timed runs, "
        f"{args.quantization} int8, {elapsed_s:.1f}s"
    )
    print(
        f"size     fp32 {sizes['fp32']:>9,} B   int8 {sizes['int8']:>9,} B   "
        f"ratio {report['size_ratio']:.3f}"
    )
    print(
        f"accuracy fp32 {accuracy['fp32']:.4f}       int8 {accuracy['int8']:.4f}       "
        f"agreement {report['agreement']:.4f}"
    )
    print(
        f"p50      fp32 {latency['fp32']:>8.1f} us   int8 {latency['int8']:>8.1f} us   "
        f"speed-up x{latency['fp32'] / latency['int8']:.2f}"
    )
    print(
        json.dumps(
            {
                "size_ratio": round(report["size_ratio"], 4),
                "fp32_accuracy": round(accuracy["fp32"], 4),
                "int8_accuracy": round(accuracy["int8"], 4),
                "agreement": round(report["agreement"], 4),
                "fp32_p50_us": round(latency["fp32"], 2),
                "int8_p50_us": round(latency["int8"], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
