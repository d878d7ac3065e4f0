"""Rollout errors, in the EdgeOps hierarchy (edgeops.errors):

    RegistryError (409)
    └── RolloutError                 the rollout cannot do what was asked
        ├── RolloutConflictError     another rollout is active for the same devices
        │   └── RolloutChangedError  the rollout changed between reading and writing it
        └── RolloutStateError        the rollout's status forbids the request (resume a
                                     completed rollout, pause an aborted one)
    NotFoundError (404)              no such rollout, release or device
    ConfigError (400)                a rollout that selects no device
"""

from __future__ import annotations

from edgeops.errors import RegistryError

__all__ = ["RolloutChangedError", "RolloutConflictError", "RolloutError", "RolloutStateError"]


class RolloutError(RegistryError):
    """A rollout request that the controller refuses."""


class RolloutConflictError(RolloutError):
    """Another rollout is already active for the same target group."""


class RolloutChangedError(RolloutConflictError):
    """The rollout's revision moved (a runner tick, another operator) after it was read."""


class RolloutStateError(RolloutError):
    """The rollout's current status does not allow the request."""
