"""Benchmark: the fleet monitor on the digits task, from sketches alone.

    python benchmarks/bench_monitor.py [--quick]

Packages the digits model (int8, with its signed monitoring reference and calibration map),
then simulates cohort windows of --window predictions (default 500) by sampling the task's
data through the int8 onnxruntime session and binning them as an agent does:

- false alarms: no-drift windows drawn from the training split (the reference is the
  held-out split), scored with thresholds calibrated to the default 1/1000 rate;
- detection delay: windows under a brightness change whose PSI against the unshifted data
  (both large samples) is 0.1 or 0.25, counted from the shift to `drift_detected`;
- estimated accuracy: CBPE-style estimate vs realised accuracy over mild shifts that keep
  realised accuracy >= 90 % (windows drawn from the held-out split, which the calibration
  was fitted on), beside the naive mean-confidence estimate;
- severe shifts (realised accuracy < 80 %): share flagged by drift or quality events;
- throughput: device windows (50 predictions) scored per second on one core (every
  statistic and its calibrated p-value), and its ratio to a bare numpy PSI pass over the
  same histograms.

Human-readable lines go first; the LAST line is one JSON object:
    false_alarm_rate, detection_windows_psi_0_1, detection_windows_psi_0_25,
    estimated_accuracy_mae_pp, severe_shifts_flagged, device_windows_per_s, numpy_ratio
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from agent.runtime import ModelRuntime  # noqa: E402
from edgeops.packaging import package_model  # noqa: E402
from edgeops.schemas import ReleaseInfo  # noqa: E402
from edgeops.sketches import confidence_bins, feature_histograms_v2  # noqa: E402
from edgeops.tasks import TrainConfig, load_task  # noqa: E402
from server.monitoring.detector import (  # noqa: E402
    CohortState,
    MonitorPolicy,
    Reference,
    WindowInput,
    confirm,
    score_windows,
)
from server.monitoring.reference import reference_from_release  # noqa: E402
from server.monitoring.statistics import psi, score_features  # noqa: E402
from server.monitoring.thresholds import CalibrationCache  # noqa: E402

MODES = {
    "quick": {"epochs": 10, "no_drift_windows": 1000, "trials": 10, "accuracy_windows": 10,
              "device_windows": 20_000},
    "full": {"epochs": 30, "no_drift_windows": 5000, "trials": 30, "accuracy_windows": 40,
             "device_windows": 100_000},
}
Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]
MAX_DELAY = 10


def brightness(factor: float) -> Shift:
    return lambda x, _rng: np.clip(x * factor, 0.0, 1.0)


def noise(sigma: float) -> Shift:
    return lambda x, rng: np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0)


def translate(dx: int, dy: int) -> Shift:
    def shift(x: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
        images = np.roll(x.reshape(-1, 8, 8), (dy, dx), axis=(1, 2))
        if dx:
            images[:, :, :dx] = 0.0 if dx > 0 else images[:, :, :dx]
        if dy:
            images[:, :dy, :] = 0.0 if dy > 0 else images[:, :dy, :]
        return images.reshape(len(x), 64)

    return shift


def stuck_sensor(feature: int, value: float) -> Shift:
    def shift(x: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        out[:, feature] = value
        return out

    return shift


class Simulator:
    """Windows of sketches from a pool of inputs, through the released int8 model."""

    def __init__(self, runtime: ModelRuntime, edges: np.ndarray, num_classes: int) -> None:
        self.runtime, self.edges, self.num_classes = runtime, edges, num_classes

    def window(
        self, pool_x: np.ndarray, pool_y: np.ndarray, n: int, rng: np.random.Generator,
        shift: Shift | None = None,
    ) -> tuple[WindowInput, float, float]:
        """(window, realised accuracy, naive mean confidence)."""
        index = rng.integers(0, len(pool_x), n)
        x = pool_x[index]
        if shift is not None:
            x = shift(x, rng)
        x = x.astype(np.float32)
        probs = self.runtime.predict(x)
        pred = probs.argmax(axis=1)
        conf = probs.max(axis=1)
        cc = np.zeros((self.num_classes, 10), dtype=np.int64)
        np.add.at(cc, (pred, confidence_bins(conf)), 1)
        window = WindowInput(
            "digits/1@fleet", n, feature_histograms_v2(x, self.edges),
            np.bincount(pred, minlength=self.num_classes), cc,
        )
        return window, float(np.mean(pred == pool_y[index])), float(conf.mean())


def _shift_psi(shift: Shift, pool: np.ndarray, edges: np.ndarray, seed: int) -> float:
    rng = np.random.default_rng(seed)
    base = pool[rng.integers(0, len(pool), 20_000)]
    moved = shift(pool[rng.integers(0, len(pool), 20_000)], rng)
    return float(psi(feature_histograms_v2(base, edges), feature_histograms_v2(moved, edges)).mean())


def brightness_for_psi(target: float, pool: np.ndarray, edges: np.ndarray) -> float:
    lo, hi = 1.0, 2.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if _shift_psi(brightness(mid), pool, edges, 0) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--window", type=int, default=500, help="predictions per cohort window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    started = time.perf_counter()
    n = args.window
    rng = np.random.default_rng(args.seed)
    policy = MonitorPolicy()
    task = load_task("digits")
    data = task.load_data()

    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as scratch:
        out = Path(scratch) / "package"
        report = package_model(
            "digits", out, train_config=TrainConfig(epochs=mode["epochs"], seed=args.seed),
            latency_runs=200,
        )
        info = ReleaseInfo.model_validate({**report.data["release_info"]["int8"], "version": 1})
        runtime = ModelRuntime(out / "model.int8.onnx", info)
        reference = reference_from_release("digits/1/model.int8.onnx", info)
        if reference is None or reference.calibration is None:
            print("the release carries no monitoring reference", file=sys.stderr)
            return 1
        edges = np.asarray(info.input.feature_bin_edges)
        sim = Simulator(runtime, edges, info.num_classes)
        cache = CalibrationCache()
        null = cache.get(reference.key, reference.feature_histograms, edges, n,
                         reference.predicted_classes)
        print(f"packaged in {time.perf_counter() - started:.1f} s; reference of "
              f"{info.monitoring.sample_count if info.monitoring else '?'} held-out rows, "
              f"accuracy {reference.accuracy:.3f}")

        def score(window: WindowInput, ref: Reference = reference):  # noqa: ANN202
            return score_windows([(window, ref, null)], policy)[0]

        # 1. False alarms on no-drift windows (training split: not the reference's rows).
        flagged = 0
        confirmed = 0
        state = CohortState()
        for i in range(mode["no_drift_windows"]):
            window, _acc, _naive = sim.window(data.x_train, data.y_train, n, rng)
            s = score(window)
            flagged += s.verdict == "drift"
            state, events = confirm(state, s, reference, policy, f"w{i}")
            confirmed += sum(e.kind == "drift_detected" for e in events)
        false_alarm_rate = flagged / mode["no_drift_windows"]
        print(f"no drift: {flagged}/{mode['no_drift_windows']} windows flagged, "
              f"{confirmed} confirmed drift events")

        # 2. Detection delay for brightness shifts of a given PSI.
        delays: dict[float, float] = {}
        for target in (0.1, 0.25):
            factor = brightness_for_psi(target, data.x_train, edges)
            runs = []
            for t in range(mode["trials"]):
                state = CohortState()
                delay = MAX_DELAY + 1
                for k in range(1, MAX_DELAY + 1):
                    window, _acc, _naive = sim.window(data.x_train, data.y_train, n, rng,
                                                      brightness(factor))
                    state, events = confirm(state, score(window), reference, policy, f"t{t}w{k}")
                    if any(e.kind == "drift_detected" for e in events):
                        delay = k
                        break
                runs.append(delay)
            delays[target] = float(np.mean(runs))
            print(f"PSI {target}: brightness x{factor:.3f}, drift_detected after "
                  f"{delays[target]:.2f} windows on average (max {max(runs)})")

        # 3. Estimated vs realised accuracy under mild shifts; 4. severe shifts flagged.
        shifts: dict[str, Shift | None] = {
            "none": None, "brightness x0.9": brightness(0.9), "brightness x1.1": brightness(1.1),
            "brightness x1.15": brightness(1.15), "noise 0.03": noise(0.03),
            "noise 0.05": noise(0.05), "noise 0.1": noise(0.1),
            "translate right 1": translate(1, 0), "translate down 1": translate(0, 1),
            "translate left 1": translate(-1, 0), "noise 0.3": noise(0.3),
            "brightness x0.4": brightness(0.4), "stuck sensor 36 = 1.5": stuck_sensor(36, 1.5),
        }
        errors, naive_errors = [], []
        severe, severe_flagged = 0, 0
        for name, shift in shifts.items():
            est, real, naive = [], [], []
            state, flagged_here = CohortState(), False
            for k in range(mode["accuracy_windows"]):
                window, acc, conf = sim.window(data.x_test, data.y_test, n, rng, shift)
                s = score(window)
                state, events = confirm(state, s, reference, policy, f"{name}{k}")
                flagged_here |= any(e.kind in ("drift_detected", "quality_dropped") for e in events)
                est.append(s.estimated_accuracy or 0.0)
                real.append(acc)
                naive.append(conf)
            mean_real = float(np.mean(real))
            if mean_real >= 0.9:
                errors += [abs(e - r) for e, r in zip(est, real, strict=True)]
                naive_errors += [abs(c - r) for c, r in zip(naive, real, strict=True)]
            if mean_real < 0.8:
                severe += 1
                severe_flagged += flagged_here
            print(f"  {name:<22} realised {mean_real:.3f}  estimated {np.mean(est):.3f}  "
                  f"naive {np.mean(naive):.3f}  flagged {flagged_here}")
        mae_pp = 100 * float(np.mean(errors))
        naive_mae_pp = 100 * float(np.mean(naive_errors))
        print(f"estimated accuracy MAE {mae_pp:.2f} pp (naive mean confidence {naive_mae_pp:.2f} pp)"
              f"; severe shifts flagged {severe_flagged}/{severe}")

    # 5. Throughput: device windows of 50 predictions, every statistic and p-value.
    device_n = 50
    count = mode["device_windows"]
    index = rng.integers(0, len(data.x_train), (count, device_n))
    histograms = np.stack([feature_histograms_v2(data.x_train[row], edges) for row in index[:500]])
    batch = histograms[rng.integers(0, len(histograms), count)]
    device_null = cache.get(reference.key, reference.feature_histograms, edges, device_n)
    chunk = 2000
    t0 = time.perf_counter()
    for start in range(0, count, chunk):
        part = batch[start : start + chunk]
        scores = score_features(reference.feature_histograms, part, edges)
        for stat in policy.decision_statistics:
            device_null.p_values(stat, scores[stat])
    monitor_s = time.perf_counter() - t0
    ref_p = np.maximum(reference.feature_histograms / reference.feature_histograms.sum(-1, keepdims=True), 1e-4)
    t0 = time.perf_counter()
    for start in range(0, count, chunk):
        part = batch[start : start + chunk].astype(np.float64)
        obs = np.maximum(part / part.sum(-1, keepdims=True), 1e-4)
        np.sum((obs - ref_p) * np.log(obs / ref_p), axis=-1)
    numpy_s = time.perf_counter() - t0
    rate = count / monitor_s
    numpy_ratio = rate / (count / numpy_s)
    print(f"throughput: {rate:,.0f} device windows/s (bare numpy PSI {count / numpy_s:,.0f}/s)")
    print(f"total {time.perf_counter() - started:.1f} s")
    print(json.dumps({
        "false_alarm_rate": round(false_alarm_rate, 5),
        "detection_windows_psi_0_1": round(delays[0.1], 2),
        "detection_windows_psi_0_25": round(delays[0.25], 2),
        "estimated_accuracy_mae_pp": round(mae_pp, 3),
        "severe_shifts_flagged": round(severe_flagged / severe, 3) if severe else None,
        "device_windows_per_s": round(rate),
        "numpy_ratio": round(numpy_ratio, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
