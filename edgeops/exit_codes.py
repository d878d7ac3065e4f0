"""CLI exit codes: one enum, so scripts can tell failures apart."""

from __future__ import annotations

import enum

from edgeops import errors


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # an unexpected error (a bug): the traceback is shown
    USAGE = 2  # Click's own code for bad arguments
    CONFIG = 3  # a file, setting or task that is wrong
    GATE_REFUSED = 4  # a quality gate refused (e.g. int8 accuracy budget)
    TRUST = 5  # signed data refused
    TRANSPORT = 6  # broker or server unreachable
    UPDATE = 7  # an update failed and was rolled back
    NOT_FOUND = 8
    MISSING_DEPENDENCY = 9  # an extra or a system program is not installed
    TRAINING = 10  # federated rounds produced no new model; nothing registered


def exit_code_for(error: errors.EdgeOpsError) -> ExitCode:
    """Map a domain error to the exit code the CLI returns for it."""
    table: list[tuple[type[errors.EdgeOpsError], ExitCode]] = [
        (errors.QuantizationGateError, ExitCode.GATE_REFUSED),
        (errors.NotFoundError, ExitCode.NOT_FOUND),
        (errors.MissingDependencyError, ExitCode.MISSING_DEPENDENCY),
        (errors.ConfigError, ExitCode.CONFIG),
        (errors.TrustError, ExitCode.TRUST),
        (errors.TransportError, ExitCode.TRANSPORT),
        (errors.UpdateError, ExitCode.UPDATE),
        (errors.TrainingError, ExitCode.TRAINING),
    ]
    for error_type, code in table:
        if isinstance(error, error_type):
            return code
    return ExitCode.FAILURE
