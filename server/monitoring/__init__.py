"""The fleet monitor: drift and model quality from device sketches alone.

    statistics   PSI, Jensen-Shannon, Hellinger, Wasserstein-1, binned KS, out-of-range, prior
    thresholds   null models calibrated from the reference's sampling variability
    estimate     label-free (CBPE-style), naive and realised accuracy
    detector     the pure core: score_windows (BH across features x cohorts), confirm (CUSUM)
    reference    a release's monitoring reference from its signed release info
    merge        one window's telemetry rows summed into cohort windows
    store        window scores, events, cohort state and the single-monitor lease
    runner       the I/O shell: roll telemetry up into windows, score, persist, prune
    metrics      drift and accuracy gauges for /metrics
"""

from server.monitoring.detector import (
    CohortScore,
    CohortState,
    MonitorEvent,
    MonitorPolicy,
    Reference,
    WindowInput,
    confirm,
    score_windows,
)
from server.monitoring.estimate import estimated_accuracy, naive_accuracy, realised_accuracy
from server.monitoring.metrics import MonitorCollector
from server.monitoring.reference import RepositoryReferences, reference_from_release
from server.monitoring.runner import MonitorConfig, MonitorRunner, config_from_settings
from server.monitoring.thresholds import CalibrationCache, NullModel, calibrate

__all__ = [
    "CalibrationCache",
    "CohortScore",
    "CohortState",
    "MonitorCollector",
    "MonitorConfig",
    "MonitorEvent",
    "MonitorPolicy",
    "MonitorRunner",
    "NullModel",
    "Reference",
    "RepositoryReferences",
    "WindowInput",
    "calibrate",
    "config_from_settings",
    "confirm",
    "estimated_accuracy",
    "naive_accuracy",
    "realised_accuracy",
    "reference_from_release",
    "score_windows",
]
