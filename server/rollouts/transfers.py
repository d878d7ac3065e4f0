"""Bytes a rollout sent: the transfers its devices reported for its target, summed.

    transfer_totals(session, rollout ids) -> {rollout id: TransferTotals}

A device counts once it reported how the rollout's target reached it (its status
`transfer`, kept in `device_transfers`) since the rollout was created. A device that was
already on the target (phase "already") counts 0 sent and 0 full, whatever it once
downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from server.db.tables import DeviceTransfer, Rollout, RolloutDevice
from server.rollouts.summary import TransferTotals

__all__ = ["transfer_totals"]


def transfer_totals(session: Session, rollout_ids: Iterable[int]) -> dict[int, TransferTotals]:
    """{rollout id: its devices' transfers of its target, summed} in one query."""
    ids = list(rollout_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(
            RolloutDevice.rollout_id,
            DeviceTransfer.how,
            func.count(),
            func.sum(DeviceTransfer.bytes_received),
            func.sum(DeviceTransfer.full_bytes),
        )
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .join(DeviceTransfer, and_(
            DeviceTransfer.device_id == RolloutDevice.device_id,
            DeviceTransfer.target == Rollout.target,
            DeviceTransfer.recorded_at >= Rollout.created_at,
        ))  # fmt: skip
        .where(RolloutDevice.rollout_id.in_(ids), RolloutDevice.phase != "already")
        .group_by(RolloutDevice.rollout_id, DeviceTransfer.how)
    )
    sums: dict[int, tuple[int, int, dict[str, int]]] = {i: (0, 0, {}) for i in ids}
    for rollout_id, how, count, sent, full in rows:
        total_sent, total_full, counts = sums[rollout_id]
        sums[rollout_id] = (total_sent + int(sent), total_full + int(full), {**counts, how: count})
    return {
        i: TransferTotals(bytes_sent=sent, bytes_full=full, transfers=counts)
        for i, (sent, full, counts) in sums.items()
    }
