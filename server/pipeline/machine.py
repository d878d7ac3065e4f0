"""The pipeline run's states and the only moves between them.

    triggered ─► training ─► evaluating ─► gated ─► packaging ─► signed ─► awaiting_approval
        ─► canary ─► promoted | rolled_back
    any state before canary ─► refused (a gate, a training failure, an approval timeout)

Each state names what the run is doing (or waiting for) while in it; the runner persists
the state *before* the side effect that state stands for, so after a crash it knows which
step to check and resume (`server.pipeline.runner`). `move` refuses a transition this table
does not list: a bug in the runner fails loudly instead of skipping a gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from edgeops.errors import EdgeOpsError

__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "PipelineStateError", "PipelineStatus",
           "STATUSES", "TRANSITIONS", "check_move"]

PipelineStatus = Literal[
    "triggered",
    "training",
    "evaluating",
    "gated",
    "packaging",
    "signed",
    "awaiting_approval",
    "canary",
    "promoted",
    "rolled_back",
    "refused",
]

STATUSES: tuple[str, ...] = (
    "triggered", "training", "evaluating", "gated", "packaging", "signed",
    "awaiting_approval", "canary", "promoted", "rolled_back", "refused",
)
FINAL_STATUSES: frozenset[str] = frozenset({"promoted", "rolled_back", "refused"})
ACTIVE_STATUSES: frozenset[str] = frozenset(STATUSES) - FINAL_STATUSES

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "triggered": frozenset({"training", "refused"}),
    "training": frozenset({"evaluating", "refused"}),
    "evaluating": frozenset({"gated", "refused"}),
    "gated": frozenset({"packaging", "refused"}),
    "packaging": frozenset({"signed", "refused"}),
    "signed": frozenset({"awaiting_approval", "refused"}),
    "awaiting_approval": frozenset({"canary", "refused"}),
    "canary": frozenset({"promoted", "rolled_back"}),
    "promoted": frozenset(),
    "rolled_back": frozenset(),
    "refused": frozenset(),
}


class PipelineStateError(EdgeOpsError):
    """A move the transition table does not allow, or a request the run's state forbids."""


def check_move(run_id: int, current: str, to: str) -> None:
    if to not in TRANSITIONS.get(current, frozenset()):
        raise PipelineStateError(f"pipeline run {run_id} cannot go from {current} to {to}")
