"""What an operator sees of a rollout: per-wave progress and totals (API, console, CLI).

    summarize(rollout row, assignments, transfers) -> RolloutSummary
    bytes_text(bytes sent, bytes full) -> "1.2 MB of 5.8 MB full (21 %)"

`transfers` (`server.rollouts.transfers`) are the bytes the rollout's devices received
for its target, and what full downloads would have cost; summarize takes them as values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from server.db.tables import Rollout, RolloutDevice

__all__ = [
    "DONE_PHASES",
    "FAILED_PHASES",
    "RolloutSummary",
    "TransferTotals",
    "WaveSummary",
    "bytes_text",
    "summarize",
]

DONE_PHASES = frozenset({"succeeded", "already"})
FAILED_PHASES = frozenset({"failed", "timed_out", "rollback_failed"})
_STOPPED_STATUSES = frozenset({"aborting", "aborted"})


@dataclass(frozen=True)
class WaveSummary:
    index: int  # 1-based
    devices: int
    cumulative_devices: int
    phases: dict[str, int]
    done: int  # succeeded or already on the target
    failed: int
    staged: int  # downloaded and staged, waiting for their switch window or command
    # "queued" | "in_progress" | "soaking" | "passed"; once the rollout stops, the wave it was
    # on reads "aborting" then "aborted", and the waves after it "skipped"
    status: str


@dataclass(frozen=True)
class TransferTotals:
    """The bytes a rollout's devices received for its target (`bytes_sent`) and what full
    downloads would have cost them (`bytes_full`); `transfers`: devices per how the release
    arrived ("full", "delta", "compressed", "cached")."""

    bytes_sent: int = 0
    bytes_full: int = 0
    transfers: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutSummary:
    id: int
    target: str
    group: str | None
    tags: list[str]
    status: str
    reason: str | None
    policy: dict[str, Any]
    current_wave: int  # 1-based
    wave_count: int
    devices: int
    done: int
    failed: int
    staged: int  # waiting to switch (policy `switch` "window" or "command")
    progress_pct: float  # share of devices on the target and healthy
    phases: dict[str, int]
    waves: list[WaveSummary] = field(default_factory=list)
    created_by: str = ""
    created_at: str = ""
    updated_at: str = ""
    finished_at: float | None = None
    bytes_sent: int = 0  # received by the devices that reported how the target arrived
    bytes_full: int = 0  # what full downloads to those devices would have cost
    transfers: dict[str, int] = field(default_factory=dict)  # devices per how it arrived

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _wave_status(rollout: Rollout, index0: int) -> str:
    stopped = rollout.status in _STOPPED_STATUSES
    if rollout.wave_started_at is None or index0 > rollout.current_wave:
        return "skipped" if stopped else "queued"  # an aborted rollout never starts them
    if index0 < rollout.current_wave or rollout.status == "completed":
        return "passed"
    if stopped:
        return rollout.status  # the wave it was on says the rollout is aborting/aborted
    return "soaking" if rollout.soak_started_at is not None else "in_progress"


def summarize(
    rollout: Rollout,
    assignments: Sequence[RolloutDevice] | None = None,
    phase_counts: Mapping[str, int] | None = None,
    transfers: TransferTotals | None = None,
) -> RolloutSummary:
    """Totals from `phase_counts` (cheap, for lists) or per wave from `assignments`, with
    the bytes `transfers` sums (none: 0 sent of 0)."""
    transfers = transfers or TransferTotals()
    waves: list[WaveSummary] = []
    phases: dict[str, int] = dict(phase_counts or {})
    if assignments is not None:
        phases = {}
        per_wave: dict[int, dict[str, int]] = {}
        for row in assignments:
            phases[row.phase] = phases.get(row.phase, 0) + 1
            wave = per_wave.setdefault(row.wave, {})
            wave[row.phase] = wave.get(row.phase, 0) + 1
        cumulative = 0
        for index0 in sorted(per_wave):
            counts = per_wave[index0]
            size = sum(counts.values())
            cumulative += size
            waves.append(
                WaveSummary(
                    index=index0 + 1,
                    devices=size,
                    cumulative_devices=cumulative,
                    phases=counts,
                    done=sum(n for p, n in counts.items() if p in DONE_PHASES),
                    failed=sum(n for p, n in counts.items() if p in FAILED_PHASES),
                    staged=counts.get("staged", 0),
                    status=_wave_status(rollout, index0),
                )
            )
    total = sum(phases.values())
    done = sum(n for p, n in phases.items() if p in DONE_PHASES)
    failed = sum(n for p, n in phases.items() if p in FAILED_PHASES)
    wave_count = len(waves) if waves else max(len(rollout.policy.get("waves_pct", [])), 1)
    return RolloutSummary(
        id=rollout.id,
        target=rollout.target,
        group=rollout.group_name,
        tags=list(rollout.tags or []),
        status=rollout.status,
        reason=rollout.reason,
        policy=dict(rollout.policy),
        current_wave=rollout.current_wave + 1,
        wave_count=wave_count,
        devices=total,
        done=done,
        failed=failed,
        staged=phases.get("staged", 0),
        progress_pct=round(100.0 * done / total, 1) if total else 0.0,
        phases=phases,
        waves=waves,
        created_by=rollout.created_by,
        created_at=rollout.created_at.isoformat() if rollout.created_at else "",
        updated_at=rollout.updated_at.isoformat() if rollout.updated_at else "",
        finished_at=rollout.finished_at,
        bytes_sent=transfers.bytes_sent,
        bytes_full=transfers.bytes_full,
        transfers=dict(transfers.transfers),
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def bytes_text(bytes_sent: int, bytes_full: int) -> str:
    """`"1.2 MB of 5.8 MB full (21 %)"`; `"none reported yet"` before any transfer."""
    if bytes_full <= 0:
        return "none reported yet"
    share = round(100 * bytes_sent / bytes_full)
    return f"{_size(bytes_sent)} of {_size(bytes_full)} full ({share} %)"
