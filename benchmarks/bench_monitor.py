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
  same histograms;
- fleet scale: one default window (the server's monitor_window_s) of telemetry from 1,000
  devices (10,000 without --quick), window_s / telemetry_interval_s batches each, built by
  the agent's TelemetryWindow and stored by ingest's record_telemetry in SQLite (or
  --database-url), then the runner's tick over it: cold (first window, calibrating) and
  warm (best of the trials; the same window re-scored after clearing the monitor's tables).
  Baselines in the same run: selecting the rows' raw JSON text (`fleet_bare_read_s`), and
  that plus json.loads of every payload (`fleet_bare_decode_s`). --profile prints a
  cProfile of one warm tick.

Human-readable lines go first; the LAST line is one JSON object:
    false_alarm_rate, detection_windows_psi_0_1, detection_windows_psi_0_25,
    estimated_accuracy_mae_pp, severe_shifts_flagged, device_windows_per_s, numpy_ratio,
    fleet_devices, fleet_rows, fleet_window_s, fleet_score_s, fleet_cold_score_s,
    fleet_window_share (score_s / window_s, target < 0.10), fleet_score_ms_per_device,
    fleet_window_share_10k (linear from the devices measured), fleet_bare_read_s,
    fleet_bare_decode_s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sqlalchemy import delete, text  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from agent.config import AgentConfig  # noqa: E402
from agent.runtime import ModelRuntime  # noqa: E402
from agent.telemetry.window import TelemetryWindow, WindowRelease  # noqa: E402
from edgeops.messages import DeviceStatus, TelemetryBatch  # noqa: E402
from edgeops.packaging import package_model  # noqa: E402
from edgeops.schemas import ReleaseInfo  # noqa: E402
from edgeops.sketches import confidence_bins, feature_histograms_v2  # noqa: E402
from edgeops.tasks import TrainConfig, load_task  # noqa: E402
from server.config.settings import ServerSettings  # noqa: E402
from server.db.engine import close_database, open_database  # noqa: E402
from server.db.tables import (  # noqa: E402
    DeviceLabel,
    MonitorCohortState,
    MonitorEventRecord,
    MonitorLease,
    MonitorWindowScore,
)
from server.fleet.ingest.worker import IngestTuning  # noqa: E402
from server.fleet.inventory import apply_status, load_devices, record_telemetry  # noqa: E402
from server.monitoring.detector import (  # noqa: E402
    CohortState,
    MonitorPolicy,
    Reference,
    WindowInput,
    confirm,
    score_windows,
)
from server.monitoring.reference import reference_from_release  # noqa: E402
from server.monitoring.runner import MonitorConfig, MonitorRunner, config_from_settings  # noqa: E402
from server.monitoring.statistics import psi, score_features  # noqa: E402
from server.monitoring.thresholds import CalibrationCache  # noqa: E402

MODES = {
    "quick": {"epochs": 10, "no_drift_windows": 1000, "trials": 10, "accuracy_windows": 10,
              "device_windows": 20_000, "fleet_devices": 1000, "fleet_trials": 1},
    "full": {"epochs": 30, "no_drift_windows": 5000, "trials": 30, "accuracy_windows": 40,
             "device_windows": 100_000, "fleet_devices": 10_000, "fleet_trials": 2},
}
Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]
MAX_DELAY = 10
# Fleet scale: agents flush a batch every telemetry_interval_s; ingest stores them in
# transactions of up to batch_max_messages; the operator's groups of devices.
AGENT_INTERVAL_S = AgentConfig.__dataclass_fields__["telemetry_interval_s"].default
INGEST_BATCH = IngestTuning().batch_max_messages
FLEET_GROUPS = 20
PREDICTIONS_PER_BATCH = 10  # one prediction a second


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


# 6. Fleet scale: one default window of telemetry from every device, through the real monitor.


def fleet_templates(
    runtime: ModelRuntime, info: ReleaseInfo, pool_x: np.ndarray, count: int, predictions: int,
    rng: np.random.Generator, start: float,
) -> list[TelemetryBatch]:
    """`count` telemetry batches as the agent builds them (its real TelemetryWindow), each of
    `predictions` predictions from the int8 model over rows of `pool_x`."""
    release = WindowRelease.of(info)
    out = []
    for i in range(count):
        window = TelemetryWindow("template", release, start, seed=i)
        for _ in range(predictions):
            x = pool_x[rng.integers(0, len(pool_x), 1)].astype(np.float32)
            window.record(float(rng.uniform(0.0005, 0.002)), x, runtime.predict(x))
        batch = window.flush(start + AGENT_INTERVAL_S, rss_mb=60.0, cpu_percent=3.0)
        assert batch is not None
        out.append(batch)
    return out


def populate_fleet(
    factory: sessionmaker, templates: list[TelemetryBatch], release: str, devices: int,
    per_device: int, t0: float, rng: np.random.Generator,
) -> None:
    """Every device's status, group label and `per_device` telemetry batches of the window
    starting at `t0`, stored through the real ingest functions in ingest-sized transactions."""
    now = datetime.now(UTC)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    model, version = templates[0].model, templates[0].version
    with factory() as session, session.begin():
        load_devices(session, ids, now)
        for i, device_id in enumerate(ids):
            apply_status(session, DeviceStatus(device_id=device_id, online=True, state="idle",
                                               model=model, version=version, release=release), now)
            session.add(DeviceLabel(device_id=device_id, group_name=f"site-{i % FLEET_GROUPS:02d}",
                                    tags=[]))
    pending: list[TelemetryBatch] = []
    phases = rng.uniform(0.0, AGENT_INTERVAL_S, devices)  # agents are not aligned
    for slot in range(per_device):
        for i, device_id in enumerate(ids):
            end = t0 + phases[i] + slot * AGENT_INTERVAL_S
            pending.append(templates[rng.integers(len(templates))].model_copy(update={
                "device_id": device_id, "message_id": uuid.uuid4().hex,
                "window_start": end - AGENT_INTERVAL_S, "window_end": end,
            }))
            if len(pending) == INGEST_BATCH:
                with factory() as session, session.begin():
                    record_telemetry(session, pending, now)
                pending = []
    if pending:
        with factory() as session, session.begin():
            record_telemetry(session, pending, now)


def _reset_monitor(factory: sessionmaker) -> None:
    """Forget what the monitor did, so the same window is scored again (warm caches)."""
    with factory() as session, session.begin():
        for table in (MonitorWindowScore, MonitorEventRecord, MonitorCohortState, MonitorLease):
            session.execute(delete(table))


def time_fleet_window(
    factory: sessionmaker, reference: Reference, release: str, t0: float, config: MonitorConfig,
    trials: int, profile: bool = False,
) -> dict[str, float]:
    """The runner's tick over the window at `t0` (cold: first; warm: best of `trials`), and
    the bare read of the same rows (raw JSON text, then parsed) for comparison."""
    short = release.rsplit("/", 1)[0]
    runner = MonitorRunner(
        factory, lambda key: reference if key in (release, short) else None, config,
        clock=lambda: t0 + config.window_s + config.grace_s, holder="bench",
    )
    _reset_monitor(factory)
    t = time.perf_counter()
    assert runner.tick() == 1
    cold_s = time.perf_counter() - t
    warm = []
    for _ in range(trials):
        _reset_monitor(factory)
        t = time.perf_counter()
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        assert runner.tick() == 1
        warm.append(time.perf_counter() - t)
        if profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            profile = False
    with factory() as session:
        bound = {"a": t0, "b": t0 + config.window_s}
        t = time.perf_counter()
        raw = session.execute(
            text("SELECT device_id, CAST(payload AS TEXT) FROM telemetry"
                 " WHERE window_end >= :a AND window_end < :b"),
            bound,
        ).all()
        read_s = time.perf_counter() - t
        for _device, payload in raw:
            json.loads(payload)
        decode_s = time.perf_counter() - t
    return {"rows": len(raw), "cold_s": cold_s, "score_s": min(warm), "read_s": read_s,
            "decode_s": decode_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--window", type=int, default=500, help="predictions per cohort window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fleet-devices", type=int, default=0,
                        help="devices of the fleet-scale window (default 1,000 quick, 10,000 full)")
    parser.add_argument("--database-url", default="",
                        help="database of the fleet-scale window (default: SQLite in a temp dir)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of one warm fleet-scale tick")
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
        t0 = math.floor(time.time() / 3600.0) * 3600.0  # recent: inside the retention age
        templates = fleet_templates(runtime, info, data.x_train, 256, PREDICTIONS_PER_BATCH,
                                    rng, t0)

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

    # 6. Fleet scale: a default window of every device's telemetry, stored by ingest, scored
    # by the runner's tick as the server runs it.
    devices = args.fleet_devices or mode["fleet_devices"]
    with tempfile.TemporaryDirectory(prefix="bench-monitor-fleet-") as scratch:
        config = config_from_settings(ServerSettings(home=Path(scratch)))
        per_device = round(config.window_s / AGENT_INTERVAL_S)
        factory = open_database(args.database_url or f"sqlite:///{scratch}/fleet.db")
        try:
            t = time.perf_counter()
            populate_fleet(factory, templates, reference.key, devices, per_device, t0, rng)
            insert_s = time.perf_counter() - t
            fleet = time_fleet_window(factory, reference, reference.key, t0, config,
                                      mode["fleet_trials"], profile=args.profile)
        finally:
            close_database(factory)
    share = fleet["score_s"] / config.window_s
    per_device_ms = 1000 * fleet["score_s"] / devices
    print(f"fleet: {devices:,} devices x {per_device} batches = {fleet['rows']:,} rows "
          f"(stored in {insert_s:.1f} s); window {config.window_s:.0f} s scored in "
          f"{fleet['score_s']:.2f} s warm ({fleet['cold_s']:.2f} s cold) = {100 * share:.2f} % "
          f"of the window, {per_device_ms:.3f} ms/device (10k devices: "
          f"{10 * per_device_ms:.1f} s); bare read {fleet['read_s']:.2f} s, "
          f"read + json {fleet['decode_s']:.2f} s")
    print(f"total {time.perf_counter() - started:.1f} s")
    print(json.dumps({
        "false_alarm_rate": round(false_alarm_rate, 5),
        "detection_windows_psi_0_1": round(delays[0.1], 2),
        "detection_windows_psi_0_25": round(delays[0.25], 2),
        "estimated_accuracy_mae_pp": round(mae_pp, 3),
        "severe_shifts_flagged": round(severe_flagged / severe, 3) if severe else None,
        "device_windows_per_s": round(rate),
        "numpy_ratio": round(numpy_ratio, 3),
        "fleet_devices": devices,
        "fleet_rows": fleet["rows"],
        "fleet_window_s": config.window_s,
        "fleet_score_s": round(fleet["score_s"], 3),
        "fleet_cold_score_s": round(fleet["cold_s"], 3),
        "fleet_window_share": round(share, 4),
        "fleet_score_ms_per_device": round(per_device_ms, 4),
        "fleet_window_share_10k": round(10 * per_device_ms / config.window_s, 4),  # linear
        "fleet_bare_read_s": round(fleet["read_s"], 3),
        "fleet_bare_decode_s": round(fleet["decode_s"], 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
