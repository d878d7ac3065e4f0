"""A release's monitoring reference, read from its signed release info in the TUF targets."""

from __future__ import annotations

import logging
import threading

import numpy as np
from pydantic import ValidationError

from edgeops.ota_delta import is_auxiliary_target
from edgeops.schemas import ReleaseInfo
from server.monitoring.detector import Reference
from server.monitoring.statistics import pad_v1
from server.trust.repository import TufRepository

__all__ = ["RepositoryReferences", "reference_from_release"]

logger = logging.getLogger(__name__)


def reference_from_release(target_path: str, info: ReleaseInfo) -> Reference | None:
    """The monitor's Reference for `info`; None when the release carries no reference.

    A release with only the v1 `drift_reference` (B clipped bins) is monitored with empty
    out-of-range bins and no prediction or calibration reference.
    """
    edges = np.asarray(info.input.feature_bin_edges, dtype=np.float64)
    monitoring = info.monitoring
    if monitoring is not None:
        return Reference(
            key=target_path,
            feature_histograms=np.asarray(monitoring.feature_histograms, dtype=np.int64),
            bin_edges=edges,
            predicted_classes=np.asarray(monitoring.predicted_classes, dtype=np.int64),
            calibration=np.asarray(monitoring.calibration, dtype=np.float64),
            accuracy=monitoring.accuracy,
        )
    if info.drift_reference:
        return Reference(key=target_path, feature_histograms=pad_v1(info.drift_reference), bin_edges=edges)
    return None


class RepositoryReferences:
    """References of the releases in the signed TUF targets, re-read when they change.

    Called with a target path, or `<model>/<version>` when telemetry does not say which
    format a device runs (then the int8 release, else the first listed, is used).
    """

    def __init__(self, repository: TufRepository) -> None:
        self._repository = repository
        self._version: int | None = None
        self._by_key: dict[str, Reference] = {}
        self._lock = threading.Lock()

    def _reload(self) -> None:
        version = self._repository.targets_version()
        if version == self._version:
            return
        by_key: dict[str, Reference] = {}
        for entry in self._repository.targets():
            if is_auxiliary_target(entry.custom):
                continue  # a delta or compressed copy of a release, not a release
            try:
                info = ReleaseInfo.from_custom(entry.custom)
            except (ValueError, ValidationError) as err:
                logger.warning("target %s has no usable release info: %s", entry.path, err)
                continue
            reference = reference_from_release(entry.path, info)
            if reference is None:
                continue
            by_key[entry.path] = reference
            short = f"{info.model}/{info.version}"
            if short not in by_key or info.format == "int8":
                by_key[short] = reference
        self._by_key, self._version = by_key, version

    def __call__(self, release: str) -> Reference | None:
        with self._lock:
            self._reload()
            return self._by_key.get(release)
