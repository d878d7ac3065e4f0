"""Staged fleet rollouts: waves, soak, automatic abort and rollback, resumable.

    policy       RolloutPolicy: waves, soak, thresholds, timeouts, when devices switch
    controller   the pure state machine: plan_waves, decide, apply_request, switch_staged
    store        rollouts and assignments in the database
    runner       the I/O shell: tick (decide, persist, publish), its lifespan hook, and
                 switch_now (an operator's switch of staged devices)
    metrics      rollout and fleet gauges for /metrics
"""

from server.rollouts.controller import (
    Decision,
    DeviceAssignment,
    DeviceObservation,
    RolloutPolicy,
    RolloutState,
    apply_request,
    decide,
    plan_waves,
    switch_staged,
)
from server.rollouts.errors import RolloutConflictError, RolloutError, RolloutStateError
from server.rollouts.runner import RolloutRunner, rollout_lifespan, switch_now
from server.rollouts.store import RolloutSpec

__all__ = [
    "Decision",
    "DeviceAssignment",
    "DeviceObservation",
    "RolloutConflictError",
    "RolloutError",
    "RolloutPolicy",
    "RolloutRunner",
    "RolloutSpec",
    "RolloutState",
    "RolloutStateError",
    "apply_request",
    "decide",
    "plan_waves",
    "rollout_lifespan",
    "switch_now",
    "switch_staged",
]
