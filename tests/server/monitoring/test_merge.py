"""Merging a window's telemetry rows into cohorts: the streamed, per-group sums must equal
the plain sequential sum (row by row into its group and into the fleet), shapes and all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.monitoring.merge import (
    FLEET_GROUP,
    TelemetryRow,
    merge_rows,
    release_key,
    row_histograms,
)
from server.monitoring.statistics import pad_v1
from tests.server.monitoring.synthetic import make_fleet

pytestmark = pytest.mark.monitor

REFERENCE = make_fleet(seed=5).reference
F, W = REFERENCE.feature_histograms.shape
KNOWN = {"m/1/model.int8.onnx", "m/1", "m/2"}


def _reference_of(key: str):  # noqa: ANN202 - test helper
    return REFERENCE if key in KNOWN else None


def _sequential(rows: list[TelemetryRow]) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """The plain algorithm: each row, converted with np.asarray, into its group and the
    fleet; a class vector of another shape than the cohort's first is ignored."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    skipped = 0
    for row in rows:
        release = release_key(row)
        payload = row.payload
        raw = payload.get("feature_histograms")
        histograms = None
        if release in KNOWN and raw and not (payload.get("privacy") or {}).get("suppressed"):
            try:
                histograms = np.asarray(raw, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                histograms = None
            if histograms is not None and payload.get("schema", 1) == 1:
                histograms = pad_v1(histograms)
            if histograms is not None and histograms.shape != (F, W):
                histograms = None
        if release is None or histograms is None:
            skipped += 1
            continue
        for group in (row.group_name, FLEET_GROUP):
            cohort = merged.setdefault((release, group), {"count": 0, "devices": set()})
            cohort["count"] += int(payload.get("count", 0))
            cohort["devices"].add(row.device_id)
            cohort["histograms"] = cohort.get("histograms", 0) + histograms
            for name, key in (("classes", "predicted_classes"), ("class_confidence", "class_confidence"),
                              ("confusion", "confusion")):
                if not payload.get(key):
                    continue
                value = np.asarray(payload[key], dtype=np.int64)
                current = cohort.get(name)
                if current is None:
                    cohort[name] = value
                elif current.shape == value.shape:
                    cohort[name] = current + value
    return merged, skipped


def _grid(rng: np.random.Generator, rows: int, cols: int) -> list[list[int]]:
    return rng.integers(0, 5, (rows, cols)).tolist()


def _random_row(rng: np.random.Generator, i: int) -> TelemetryRow:
    kind = rng.choice(["v2"] * 10 + ["v1", "suppressed", "ragged", "strings", "missing", "huge", "wide"])
    payload: dict[str, Any] = {"schema": 2, "count": int(rng.integers(0, 50))}
    if kind == "v1":
        payload = {"count": 7, "feature_histograms": _grid(rng, F, W - 2)}
    elif kind == "ragged":
        payload["feature_histograms"] = [[1, 2]] + _grid(rng, F - 1, W)
    elif kind == "strings":
        payload["feature_histograms"] = ["x" * W] * F  # right lengths, not lists of counts
    elif kind == "huge":
        payload["feature_histograms"] = [[2**70] + [0] * (W - 1)] + _grid(rng, F - 1, W)
    elif kind == "wide":
        payload["feature_histograms"] = _grid(rng, F, W + 1)
    elif kind != "missing":
        payload["feature_histograms"] = _grid(rng, F, W)
    if kind == "suppressed":
        payload["privacy"] = {"mechanism": "none", "suppressed": True}
    classes = int(rng.choice([3, 4, 4, 4]))  # now and then a vector of another shape
    if rng.random() < 0.8:
        payload["predicted_classes"] = rng.integers(0, 9, classes).tolist()
    if rng.random() < 0.7:
        payload["class_confidence"] = _grid(rng, classes, 10)
    if rng.random() < 0.3:
        payload["confusion"] = _grid(rng, classes, classes)
    model, version, release = rng.choice([
        ("m", 1, "m/1/model.int8.onnx"), ("m", 1, None), ("m", 2, "m/1/model.int8.onnx"),
        ("x", 1, None), (None, None, None), (None, None, "m/1/model.int8.onnx"),
    ])
    group = str(rng.choice(["east", "west", "default", FLEET_GROUP]))
    return TelemetryRow(f"dev-{i % 17}", model, version, release, group, payload)


@pytest.mark.parametrize("seed", range(6))
def test_merged_cohorts_equal_the_sequential_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [_random_row(rng, i) for i in range(300)]

    merged, skipped = merge_rows(rows, _reference_of)

    expected, expected_skipped = _sequential(rows)
    assert skipped == expected_skipped > 0
    assert sorted(merged) == sorted(expected)
    for key, cohort in merged.items():
        want = expected[key]
        assert cohort.count == want["count"]
        assert cohort.devices == want["devices"]
        np.testing.assert_array_equal(cohort.histograms, want["histograms"])
        for name in ("classes", "class_confidence", "confusion"):
            got, wanted = getattr(cohort, name), want.get(name)
            assert (got is None) == (wanted is None), (key, name)
            if got is not None:
                np.testing.assert_array_equal(got, wanted)
        assert cohort.reference is REFERENCE
        assert cohort.window().cohort == f"{key[0]}@{key[1]}"


def test_each_release_is_looked_up_once() -> None:
    rng = np.random.default_rng(9)
    rows = [_random_row(rng, i) for i in range(200)]
    calls: list[str] = []

    def reference_of(key: str):  # noqa: ANN202
        calls.append(key)
        return _reference_of(key)

    merge_rows(rows, reference_of)

    assert sorted(calls) == sorted(set(calls))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ([[2**70] + [0] * (W - 1)] * F, "beyond int64"),
        ([[1.5e300] + [0] * (W - 1)] * F, "a float beyond int64"),
        ([[None] * W] * F, "not counts"),
        ([["x"] * W] * F, "not numbers"),
        ([[[1]] * W] * F, "nested too deep"),
        ([[1] * W] * (F - 1) + [[1] * (W + 1)], "ragged"),
        ([{str(k): 1 for k in range(W)}] * F, "objects, not lists"),
    ],
)
def test_histograms_that_are_not_a_grid_of_counts_are_rejected(raw: Any, why: str) -> None:
    assert row_histograms({"schema": 2, "feature_histograms": raw}, REFERENCE) is None, why


def test_v1_histograms_are_padded_and_v2_ones_read_as_sent() -> None:
    v2 = np.arange(F * W).reshape(F, W)
    v1 = np.arange(F * (W - 2)).reshape(F, W - 2)

    got_v2 = row_histograms({"schema": 2, "feature_histograms": v2.tolist()}, REFERENCE)
    got_v1 = row_histograms({"feature_histograms": v1.tolist()}, REFERENCE)

    assert got_v2 is not None and got_v2.dtype == np.int64
    np.testing.assert_array_equal(got_v2, v2)
    np.testing.assert_array_equal(got_v1, pad_v1(v1))
