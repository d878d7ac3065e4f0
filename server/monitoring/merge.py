"""Merge one time window's telemetry rows into cohort windows (pure: rows in, sums out).

    merged, skipped = merge_rows(rows, reference_of)
    window = merged[("digits/1/model.int8.onnx", "fleet")].window()

Each row counts towards its release x device group and towards the release across the fleet
(`FLEET_GROUP`). A row is skipped (and counted) when its release has no reference or its
histograms are missing, suppressed by the device's privacy or not of the reference's shape.
For the class vectors (predicted classes, class x confidence, confusion) a cohort keeps the
shape of the first row that sent one and ignores rows of another shape.

Rows are folded as they stream in and each row's sketches are converted once, however many
cohorts it counts towards: a group's sums are kept per row shape, and the fleet cohort is
the sum of its release's groups (the first row of a shape is remembered by its position in
the stream, so the fleet picks the same shape the sequential sum would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.monitoring.detector import Reference, WindowInput
from server.monitoring.statistics import pad_v1

__all__ = [
    "FLEET_GROUP",
    "CohortWindow",
    "TelemetryRow",
    "cohort_name",
    "merge_rows",
    "release_key",
    "row_histograms",
]

FLEET_GROUP = "fleet"
ReferenceOf = Callable[[str], Reference | None]
_VECTORS = (  # CohortWindow attribute, payload key
    ("classes", "predicted_classes"),
    ("class_confidence", "class_confidence"),
    ("confusion", "confusion"),
)


@dataclass(frozen=True)
class TelemetryRow:
    device_id: str
    model: str | None
    version: int | None
    release: str | None  # the device's active target path, from the inventory
    group_name: str
    payload: dict[str, Any]


def cohort_name(release: str, group: str) -> str:
    """`<release>@<group>`; the group `fleet` is the release across every device."""
    return f"{release}@{group}"


@dataclass
class CohortWindow:
    """One cohort's merged sketches over one time window."""

    release: str
    group: str
    reference: Reference
    count: int = 0
    devices: set[str] = field(default_factory=set)
    histograms: NDArray[np.int64] | None = None
    classes: NDArray[np.int64] | None = None
    class_confidence: NDArray[np.int64] | None = None
    confusion: NDArray[np.int64] | None = None

    def window(self) -> WindowInput:
        assert self.histograms is not None
        return WindowInput(
            cohort=cohort_name(self.release, self.group),
            count=self.count,
            feature_histograms=self.histograms,
            predicted_classes=self.classes,
            class_confidence=self.class_confidence,
            confusion=self.confusion,
        )


# A class vector's sums by shape: shape -> [position of the first row of that shape, sum].
_ByShape = dict[tuple[int, ...], list[Any]]


@dataclass
class _Group:
    """A release x group's running sums."""

    count: int = 0
    devices: set[str] = field(default_factory=set)
    histograms: NDArray[np.int64] | None = None
    vectors: dict[str, _ByShape] = field(default_factory=lambda: {n: {} for n, _k in _VECTORS})

    def add(self, position: int, row: TelemetryRow, histograms: NDArray[np.int64]) -> None:
        payload = row.payload
        self.count += int(payload.get("count", 0))
        self.devices.add(row.device_id)
        if self.histograms is None:
            self.histograms = histograms.copy()
        else:
            self.histograms += histograms
        for name, key in _VECTORS:
            raw = payload.get(key)
            if not raw:
                continue
            value = np.asarray(raw, dtype=np.int64)
            sums = self.vectors[name]
            entry = sums.get(value.shape)
            if entry is None:
                sums[value.shape] = [position, value.copy()]
            else:
                entry[1] += value


def _first_shape(sums: _ByShape) -> NDArray[np.int64] | None:
    if not sums:
        return None
    return min(sums.values(), key=lambda entry: entry[0])[1]


def _combine(groups: Iterable[_Group]) -> _Group:
    total = _Group()
    for group in groups:
        total.count += group.count
        total.devices |= group.devices
        assert group.histograms is not None
        total.histograms = group.histograms.copy() if total.histograms is None else (
            total.histograms + group.histograms
        )
        for name, sums in group.vectors.items():
            into = total.vectors[name]
            for shape, (position, value) in sums.items():
                entry = into.get(shape)
                if entry is None:
                    into[shape] = [position, value.copy()]
                else:
                    entry[0] = min(entry[0], position)
                    entry[1] = entry[1] + value
    return total


def _cohort(release: str, group: str, reference: Reference, sums: _Group) -> CohortWindow:
    return CohortWindow(
        release=release,
        group=group,
        reference=reference,
        count=sums.count,
        devices=sums.devices,
        histograms=sums.histograms,
        classes=_first_shape(sums.vectors["classes"]),
        class_confidence=_first_shape(sums.vectors["class_confidence"]),
        confusion=_first_shape(sums.vectors["confusion"]),
    )


def release_key(row: TelemetryRow) -> str | None:
    """The reference key of a row: the device's target path when it is of the row's model
    and version, else `<model>/<version>` (or the target path when the row names neither)."""
    if row.model is None or row.version is None:
        return row.release
    prefix = f"{row.model}/{row.version}/"
    if row.release and row.release.startswith(prefix):
        return row.release
    return f"{row.model}/{row.version}"


def row_histograms(payload: dict[str, Any], ref: Reference) -> NDArray[np.int64] | None:
    """The row's histograms in the v2 layout, or None (suppressed, missing, mismatched)."""
    raw = payload.get("feature_histograms")
    if not raw or (payload.get("privacy") or {}).get("suppressed"):
        return None
    shape = ref.feature_histograms.shape
    schema = payload.get("schema", 1)
    if schema != 1 and _is_grid(raw, shape):
        # What agents send: a list of F lists of B+2 counts. One pass over the flat values
        # (np.asarray would first discover the nesting, a third of the cost).
        try:
            flat = np.fromiter(chain.from_iterable(raw), dtype=np.int64, count=shape[0] * shape[1])
        except (TypeError, ValueError, OverflowError):  # not counts, or beyond int64
            return None
        return flat.reshape(shape)
    try:
        histograms = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return None
    if schema == 1:
        histograms = pad_v1(histograms)
    if histograms.shape != shape:
        return None
    return histograms


def _is_grid(raw: Any, shape: tuple[int, ...]) -> bool:
    """True when `raw` is a list of shape[0] lists of shape[1] values each (whose values
    np.fromiter then converts, or rejects)."""
    return (
        type(raw) is list
        and len(raw) == shape[0]
        and {*map(type, raw)} == {list}
        and {*map(len, raw)} == {shape[1]}
    )


def merge_rows(
    rows: Iterable[TelemetryRow], reference_of: ReferenceOf
) -> tuple[dict[tuple[str, str], CohortWindow], int]:
    """The cohort windows of `rows` by (release, group), and how many rows were skipped.

    `reference_of` is called once per release key met."""
    references: dict[str, Reference | None] = {}
    groups: dict[str, dict[str, _Group]] = {}
    skipped = 0
    for position, row in enumerate(rows):
        release = release_key(row)
        if release is None:
            skipped += 1
            continue
        if release in references:
            reference = references[release]
        else:
            reference = references[release] = reference_of(release)
        histograms = None if reference is None else row_histograms(row.payload, reference)
        if histograms is None:
            skipped += 1
            continue
        by_group = groups.setdefault(release, {})
        sums = by_group.get(row.group_name)
        if sums is None:
            sums = by_group[row.group_name] = _Group()
        sums.add(position, row, histograms)
    merged: dict[tuple[str, str], CohortWindow] = {}
    for release, by_group in groups.items():
        reference = references[release]
        assert reference is not None
        for group, sums in by_group.items():
            if group != FLEET_GROUP:
                merged[(release, group)] = _cohort(release, group, reference, sums)
        # The fleet is every group once; a device labelled with the group "fleet" itself
        # counts twice there (its own group and the fleet are the same cohort).
        parts = [sums for group, sums in by_group.items() if group != FLEET_GROUP]
        parts += [by_group[FLEET_GROUP]] * 2 if FLEET_GROUP in by_group else []
        merged[(release, FLEET_GROUP)] = _cohort(release, FLEET_GROUP, reference, _combine(parts))
    return merged, skipped
