"""One error hierarchy for EdgeOps, split by what the caller should do next.

    EdgeOpsError
    ├── ConfigError            bad settings, files or arguments: fix the input, do not retry
    │   ├── TaskError          a task spec that cannot be loaded or is malformed
    │   └── MissingDependencyError   a program or extra is not installed: install it
    ├── PayloadError           a wire payload that fails validation: count, log, drop
    ├── TrustError             signed data that must not be accepted (signature, expiry,
    │                          rollback, hash or length mismatch): refuse, keep what runs
    ├── TransportError         network or broker trouble: retry with backoff
    ├── UpdateError            an update that could not be applied: roll back, report
    │   └── SmokeTestError     the new model disagrees with its golden vectors
    ├── PackagingError         a model that cannot be packaged
    │   └── QuantizationGateError   int8 accuracy fell past the budget: nothing published
    ├── RegistryError          the registry refuses (duplicate version, unknown model)
    │   └── NotFoundError      the thing asked for does not exist
    └── TrainingError          federated training produced no new model: nothing registered
"""

from __future__ import annotations


class EdgeOpsError(Exception):
    """Root of every error EdgeOps raises on purpose."""


class ConfigError(EdgeOpsError):
    """Settings, files or arguments are wrong; retrying will not help."""


class TaskError(ConfigError):
    """A task spec cannot be loaded or does not describe a valid task."""


class MissingDependencyError(ConfigError):
    """A program or optional package EdgeOps needs is not installed; the message says how."""


class PayloadError(EdgeOpsError):
    """A wire payload failed validation. `reason` is one machine-readable word for
    counters: "oversized", "malformed" (not JSON) or "invalid_schema"."""

    def __init__(self, message: str, reason: str = "invalid_schema") -> None:
        super().__init__(message)
        self.reason = reason


class TrustError(EdgeOpsError):
    """Signed metadata or an artifact must not be trusted."""


class TransportError(EdgeOpsError):
    """A network, HTTP or broker operation failed; it may succeed later."""


class UpdateError(EdgeOpsError):
    """An update could not be applied; the previous model keeps serving."""


class SmokeTestError(UpdateError):
    """A staged model's outputs on the golden inputs are outside tolerance."""


class PackagingError(EdgeOpsError):
    """A model could not be exported, quantized or evaluated."""


class QuantizationGateError(PackagingError):
    """The int8 model lost more accuracy than the budget allows."""


class RegistryError(EdgeOpsError):
    """The registry refused an operation."""


class NotFoundError(RegistryError):
    """A model, version, release or device does not exist."""


class TrainingError(EdgeOpsError):
    """Training ran but produced no new model (halted SecAgg+, DP with failures, every client
    failing); nothing was registered. The message lists each round's outcome."""
